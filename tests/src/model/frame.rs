//! The frame as a TC program sees it: the linear bytes plus the skb's
//! offloaded VLAN tag, with the kernel's documented VLAN pop semantics.

/// 802.1Q TPID.
pub const TPID_8021Q: u16 = 0x8100;
/// 802.1ad (S-tag) TPID.
pub const TPID_8021AD: u16 = 0x88a8;
/// Ethernet header length.
pub const ETH_LEN: usize = 14;

/// An offloaded (out-of-band) VLAN tag: `skb->vlan_proto` and `skb->vlan_tci`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HwTag {
    pub proto: u16,
    pub tci: u16,
}

impl HwTag {
    /// The 12-bit VLAN id.
    pub fn vid(self) -> u16 {
        self.tci & 0x0fff
    }
}

/// Why a header could not be read or a tag not removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Short {
    /// A read past the end of the frame.
    Truncated,
    /// `bpf_skb_vlan_pop` refused: the in-band tag is incomplete.
    PopFailed,
}

/// A frame in flight through one program run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skb {
    pub bytes: Vec<u8>,
    pub hw: Option<HwTag>,
    /// `skb_shinfo()->gso_size`; 0 for a frame that is not a GSO super-frame.
    pub gso_size: u32,
}

/// Whether `t` is an ethertype that starts a VLAN tag.
pub fn is_vlan(t: u16) -> bool {
    t == TPID_8021Q || t == TPID_8021AD
}

impl Skb {
    /// `skb->len`: the offloaded tag is not part of it.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame has no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn u8(&self, off: usize) -> Result<u8, Short> {
        self.bytes.get(off).copied().ok_or(Short::Truncated)
    }

    /// A big-endian u16.
    pub fn be16(&self, off: usize) -> Result<u16, Short> {
        Ok(u16::from_be_bytes(self.take(off)?))
    }

    /// `N` bytes at `off`.
    pub fn take<const N: usize>(&self, off: usize) -> Result<[u8; N], Short> {
        let end = off.checked_add(N).ok_or(Short::Truncated)?;
        let s = self.bytes.get(off..end).ok_or(Short::Truncated)?;
        Ok(s.try_into().expect("slice of N bytes"))
    }

    /// The Ethernet ethertype (the TPID of an in-band tag).
    pub fn ethertype(&self) -> Result<u16, Short> {
        self.be16(12)
    }

    /// `bpf_skb_vlan_pop`: removes the offloaded tag if there is one, else
    /// the in-band outer tag; then moves the next in-band tag, if any, into
    /// the offloaded slot (Linux's `skb_vlan_pop`).
    pub fn vlan_pop(&mut self) -> Result<(), Short> {
        if self.hw.is_some() {
            self.hw = None;
        } else {
            if !self.ethertype().is_ok_and(is_vlan) {
                return Ok(());
            }
            self.remove_inband()?;
        }
        let Ok(next) = self.ethertype() else { return Ok(()) };
        if !is_vlan(next) {
            return Ok(());
        }
        let tci = self.remove_inband()?;
        self.hw = Some(HwTag { proto: next, tci });
        Ok(())
    }

    /// Removes the in-band tag after the MAC addresses; the kernel needs the
    /// whole tagged header (18 bytes) in the frame to do so.
    fn remove_inband(&mut self) -> Result<u16, Short> {
        if self.bytes.len() < ETH_LEN + 4 {
            return Err(Short::PopFailed);
        }
        let tci = self.be16(14)?;
        self.bytes.drain(12..16);
        Ok(tci)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tags: &[(u16, u16)], ethertype: u16, payload: usize) -> Skb {
        let mut b = vec![0xffu8; 6];
        b.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        for (tpid, tci) in tags {
            b.extend_from_slice(&tpid.to_be_bytes());
            b.extend_from_slice(&tci.to_be_bytes());
        }
        b.extend_from_slice(&ethertype.to_be_bytes());
        b.resize(b.len() + payload, 0);
        Skb { bytes: b, hw: None, gso_size: 0 }
    }

    #[test]
    fn popping_the_outer_tag_offloads_the_inner_one() {
        let mut skb = tagged(&[(TPID_8021Q, 0), (TPID_8021AD, 7)], 0x0800, 20);
        skb.vlan_pop().unwrap();
        assert_eq!(skb.hw, Some(HwTag { proto: TPID_8021AD, tci: 7 }));
        assert_eq!(skb.ethertype(), Ok(0x0800));
        assert_eq!(skb.len(), 14 + 20);
        // The offloaded tag goes first, and nothing else is left to offload.
        skb.vlan_pop().unwrap();
        assert_eq!((skb.hw, skb.len()), (None, 34));
    }

    #[test]
    fn an_incomplete_tag_cannot_be_popped() {
        let mut skb = tagged(&[(TPID_8021Q, 0)], 0x0800, 0);
        skb.bytes.truncate(17);
        assert_eq!(skb.vlan_pop(), Err(Short::PopFailed));
        assert_eq!(skb.take::<4>(16), Err(Short::Truncated));
    }
}
