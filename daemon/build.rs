//! Link options for cortend alone.

fn main() {
    // Pack the relative relocations (DT_RELR, glibc 2.36+). A position-
    // independent executable carries one 24-byte entry for every pointer in
    // its read-only data, which the loader reads and applies at every start:
    // 23 thousand of them, over half a MiB of the binary resident for the
    // daemon's whole life. Packed, they take a few KiB.
    println!("cargo:rustc-link-arg-bin=cortend=-Wl,-z,pack-relative-relocs");
}
