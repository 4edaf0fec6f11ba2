//! Which libtorch build this is, and what csrc/dist/c10d_sizes.txt knows of it. Shared by
//! build.rs (which reads the library file and looks its sizes up) and src/dist/abi.rs (which
//! reads the loaded library's build id).

/// The NT_GNU_BUILD_ID descriptor among the ELF note records in `notes`, as hex.
pub fn from_notes(mut notes: &[u8]) -> Option<String> {
    let word = |b: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    let align = |n: usize| (n + 3) & !3;
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + align(namesz);
        let desc = notes.get(desc_at..desc_at + descsz)?;
        if kind == 3 && name == b"GNU\0" {
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        notes = notes.get(desc_at + align(descsz)..)?;
    }
    None
}

/// The `Class=bytes` pairs csrc/dist/c10d_sizes.txt lists for `library` with build id `id`
/// (`<library> <build id> <Class>=<bytes>...` lines, `#` comments); `None` for a build not in
/// the table.
#[cfg_attr(not(test), allow(dead_code))] // the library half of the file uses only `from_notes`
pub fn sizes_in_table<'a>(table: &'a str, library: &str, id: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut fields| (fields.next() == Some(library) && fields.next() == Some(id)).then(|| fields.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_looked_up_by_library_and_build_id() {
        let table = include_str!("../../csrc/dist/c10d_sizes.txt");
        let line = table.lines().find(|l| l.starts_with("libtorch_cpu.so ")).expect("a libtorch_cpu.so line");
        let id = line.split_whitespace().nth(1).unwrap();
        let sizes = sizes_in_table(table, "libtorch_cpu.so", id).unwrap();
        assert!(sizes.iter().any(|p| p.starts_with("TCPStore=")) && sizes.iter().all(|p| p.contains('=')));
        assert_eq!(sizes_in_table(table, "libtorch_cpu.so", "0000"), None, "an unknown build");
        assert_eq!(sizes_in_table(table, "libtorch_cuda.so", id), None, "another library's id");
        assert_eq!(sizes_in_table("# libtorch_cpu.so x A=1\n", "libtorch_cpu.so", "x"), None, "a comment");
    }
}
