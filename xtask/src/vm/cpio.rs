//! The "newc" cpio format the kernel unpacks an initramfs from: a 110-byte
//! ASCII header per entry, the NUL-terminated name and the data, each padded
//! to 4 bytes, and a `TRAILER!!!` entry at the end. Uncompressed: the kernel
//! takes it as it is, and the guest's files are small.

/// An initramfs being written; entries go in the order they are added.
#[derive(Default)]
pub struct Archive {
    out: Vec<u8>,
    inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl Archive {
    /// A directory (its parents must come first).
    pub fn dir(&mut self, path: &str) {
        self.entry(path, S_IFDIR | 0o755, &[]);
    }

    /// A regular file with permissions `mode` (e.g. 0o755 for a script).
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.entry(path, S_IFREG | mode, data);
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.inode += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            self.inode,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: a fixed one keeps the archive reproducible
            data.len() as u32,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            name.len() as u32 + 1,
            0, // check
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_named_as_newc_wants() {
        let mut a = Archive::default();
        a.dir("bin");
        a.file("bin/x", 0o755, b"hello");
        let out = a.finish();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        // The second header starts 4-aligned after the first entry (110 + "bin\0" = 114 -> 116).
        assert_eq!(&out[116..122], b"070701");
        let second = &out[116..];
        // mode field (second 8-hex field) of bin/x: 0100755
        assert_eq!(&second[14..22], b"000081ed");
        // filesize field (seventh)
        assert_eq!(&second[54..62], b"00000005");
        let at = out.windows(5).position(|w| w == b"hello").unwrap();
        assert_eq!(at % 4, 0, "data starts 4-aligned");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
