//! The package's own scripts, run as dpkg would run them, with the machine
//! facts they read stood in for.

use std::path::Path;
use std::process::Command;

const PI1: &str = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
BogoMIPS\t: 697.95\nFeatures\t: half thumb fastmult vfp edsp java tls\n\
CPU architecture: 7\nHardware\t: BCM2835\n";
const PI3: &str = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n\
BogoMIPS\t: 38.40\nCPU architecture: 7\nHardware\t: BCM2835\n";

/// `preinst install` on a machine of `arch` whose /proc/cpuinfo is `cpuinfo`.
fn preinst(arch: &str, cpuinfo: &str) -> (i32, String) {
    let dir = crate::util::TempDir::new("preinst");
    let info = dir.join("cpuinfo");
    std::fs::write(&info, cpuinfo).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/debian/preinst");
    let out = Command::new("sh")
        .arg(script)
        .arg("install")
        .env("SHOP_AUTH_AGENT_ARCH", arch)
        .env("SHOP_AUTH_AGENT_CPUINFO", &info)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_armv7_package_refuses_an_armv6_cpu_and_says_why() {
    let (code, said) = preinst("armhf", PI1);
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("ARMv6") && said.contains("static ARMv6 build"),
        "{said}"
    );
    assert_eq!(
        preinst("armhf", PI3).0,
        0,
        "a Pi 2/3 in 32-bit mode is ARMv7"
    );
    assert_eq!(preinst("arm64", PI1).0, 0, "only the armhf package checks");
    assert_eq!(preinst("amd64", "").0, 0);
}
