//! Asks pkg-config for libgoxelpool's link flags (`pkg-config --libs --cflags goxelpool`, which
//! brings jansson's through `Requires: jansson`) and hands them to cargo. For a prefix pkg-config
//! does not search by default: `PKG_CONFIG_PATH=/prefix/lib/pkgconfig cargo build`. `PKG_CONFIG`
//! names another pkg-config binary. No crates are needed.
use std::env;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_LIBDIR");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG");
    println!("cargo:rerun-if-changed=build.rs");

    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let output = Command::new(&pkg_config)
        .args(["--libs", "--cflags", "goxelpool"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{pkg_config}`: {e} (install pkg-config)"));
    if !output.status.success() {
        panic!(
            "`{pkg_config} --libs --cflags goxelpool` failed: {}\n\
             install libgoxelpool (`make install PREFIX=...`) and set PKG_CONFIG_PATH=PREFIX/lib/pkgconfig",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let flags = String::from_utf8(output.stdout).expect("pkg-config printed non-UTF-8");
    for flag in flags.split_whitespace() {
        if let Some(dir) = flag.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = flag.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        } else if flag.starts_with("-I") || flag.starts_with("-D") {
            // Compile flags: nothing is compiled from C here.
        } else {
            // -Wl,-rpath,LIBDIR (goxelpool.pc puts it there so programs run without
            // LD_LIBRARY_PATH) and anything else: passed to the linker of this package's
            // binaries, tests and examples.
            println!("cargo:rustc-link-arg={flag}");
        }
    }
}
