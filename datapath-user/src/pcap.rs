//! `datapath monitor --pcap`: events as a pcapng file that tcpdump and
//! Wireshark open, each frame with what happened to it (the drop reason, or
//! the action) in its comment, and the device and port beside it.

use std::{borrow::Cow, fs::File, io::BufWriter, path::Path, time::Duration};

use anyhow::{Context, Result};
use pcap_file::{
    DataLink,
    pcapng::{
        PcapNgWriter,
        blocks::{
            enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption},
            interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption},
        },
    },
};

use crate::api::MonitorEventRow;

/// pcap-file writes timestamps in nanoseconds: the interface says so (10^-9).
const NANOSECONDS: u8 = 9;

/// A pcapng file of monitor events, one interface (Ethernet, the events' snap length).
pub struct EventFile {
    writer: PcapNgWriter<BufWriter<File>>,
}

impl EventFile {
    /// Creates `path`, frames cut at `snap` bytes.
    pub fn create(path: &Path, snap: usize) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = PcapNgWriter::new(BufWriter::new(file)).context("writing the pcapng header")?;
        let idb = InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: snap as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Borrowed("datapath")),
                InterfaceDescriptionOption::IfTsResol(NANOSECONDS),
            ],
        };
        writer.write_pcapng_block(idb).context("writing the pcapng interface")?;
        Ok(Self { writer })
    }

    /// Adds one event's frame, with a comment that says what happened to it.
    pub fn write(&mut self, ev: &MonitorEventRow) -> Result<()> {
        let data = crate::introspect::parse_hex(&ev.frame).context("an event's frame is not hex")?;
        let what = match (&ev.reason, &ev.action) {
            (Some(r), _) => format!("drop {r}"),
            (None, Some(a)) => a.clone(),
            (None, None) => ev.verdict.clone(),
        };
        let comment =
            format!("{what} at {} ({}) port {} network {}", ev.device, ev.program, ev.port_id, ev.network);
        let block = EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ev.time_ns),
            original_len: ev.len,
            data: Cow::Owned(data),
            options: vec![EnhancedPacketOption::Comment(Cow::Owned(comment))],
        };
        self.writer.write_pcapng_block(block).context("writing a pcapng packet")?;
        Ok(())
    }

    /// Writes what is buffered to the file.
    pub fn flush(&mut self) -> Result<()> {
        use std::io::Write;
        self.writer.get_mut().flush().context("flushing the pcapng file")
    }
}
