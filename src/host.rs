//! Facts about the host's KVM that change what flint gives the guest.
//!
//! On a PVM host (`kvm_pvm`, software nested virtualization) a guest kernel's ring-0 code runs through
//! KVM's instruction emulator, which lacks several instructions (see docs/pvm.md). Hiding their CPUID
//! bits is not enough for Linux — it uses some unconditionally or before reading CPUID — so for Linux
//! guests flint also appends the kernel parameters that turn those uses off.

use std::path::Path;

/// Whether /dev/kvm is provided by kvm_pvm.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Kernel parameters a Linux guest needs on a PVM host, from measurements in docs/pvm.md.
pub const PVM_LINUX_PARAMS: &[&str] = &[
    "noxsave",
    "nosmap",
    "nokaslr",
    "mitigations=off",
    "clearcpuid=popcnt,cx16,rdrand,rdseed,smap,fsgsbase,rdpid,pcid,invpcid,erms,fsrm",
    "tsc=reliable",
    "nowatchdog",
];

fn param_key(param: &str) -> &str {
    param.split_once('=').map_or(param, |(key, _)| key)
}

/// `cmdline` with each of `params` appended unless the user already set that parameter (by key).
pub fn append_missing_params(cmdline: &str, params: &[&str]) -> String {
    let present: Vec<&str> = cmdline.split_whitespace().map(param_key).collect();
    let mut out = cmdline.trim().to_string();
    for param in params {
        if !present.contains(&param_key(param)) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(param);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_settings_win() {
        let out = append_missing_params("console=ttyS0 clearcpuid=xsave", PVM_LINUX_PARAMS);
        assert!(out.starts_with("console=ttyS0 clearcpuid=xsave "));
        assert_eq!(out.matches("clearcpuid").count(), 1);
        assert!(out.contains(" noxsave"));
        assert_eq!(append_missing_params("", &["a=1", "b"]), "a=1 b");
    }
}
