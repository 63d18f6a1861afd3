//! Command-line options of the `vmm` binary, with errors that name the
//! option and the bad value.

use std::path::PathBuf;

use crate::machine::{DiskConfig, VfioConfig, VfioUserConfig, VhostUserBlkConfig};

pub const USAGE: &str = "\
usage: vmm [options]

  --kernel PATH      kernel to boot: an ELF (vmlinux, the probe) or a bzImage;
                     without it the built-in probe guest runs
  --initrd PATH      initial ramdisk
  --cmdline TEXT     kernel command line (default: console=ttyS0, and
                     probe=none for the built-in probe)
  --memory SIZE      guest RAM, e.g. 512M or 2G (default 512M), or
                     size=512M,hotplug_size=4G,slots=8 for memory hotplug
                     (device memory above RAM with DIMM slots)
  --cpus N           vCPUs, 1 to 64 (default 1)
  --serial WHERE     COM1 output: stdout (default), file=PATH, or none
  --iothread id=ID   an iothread (an epoll thread that serves device queues)
  --disk path=PATH[,readonly=on|off][,iothread=ID]...[,num_queues=N]
         [,queue_size=N][,serial=TEXT][,direct=on|off]
                     a virtio-blk disk on a raw image; repeat iothread= to
                     spread its queues over several iothreads (queue q on
                     the (q mod n)-th); without one it gets its own
  --vhost-user-blk socket=PATH[,num_queues=N][,queue_size=N][,timeout=SECS]
         [,reconnect=SECS]
                     a disk served by a vhost-user-blk backend (ours or
                     qemu-storage-daemon); waits up to timeout (default 10)
                     seconds for the socket, and up to reconnect (default
                     10, 0 = never) for a backend that went away
  --qmp PATH         a QMP monitor on unix socket PATH (mode 0600); QEMU's
                     spelling unix:PATH,server=on,wait=off works too
  --device vfio-user,socket=PATH[,timeout=SECS]
                     a PCI device served by a vfio-user server (e.g. our
                     vfio-user-edu); each exchange may take up to timeout
                     (default 5) seconds
  --device vfio,host=DDDD:BB:DD.F  or  --device vfio,sysfsdev=PATH
                     a host PCI device bound to vfio-pci, passed through
                     (its IOMMU group must be viable: all bound to vfio-pci)
  --exit-stats       print exits by kind, per device, to stderr at the end
  -h, --help         this text

The exit status is the guest's: 0 after an ACPI power-off, the value the
guest wrote to the debug-exit port 0x501 otherwise (255 if it does not fit).
Errors in the options exit with 2, other errors with 1.";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Serial {
    Stdout,
    File(PathBuf),
    None,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub memory: u64,
    /// Device memory for DIMMs (`hotplug_size=`), and its slots.
    pub hotplug_size: u64,
    pub slots: usize,
    pub cpus: u8,
    pub serial: Serial,
    pub iothreads: Vec<String>,
    pub disks: Vec<DiskConfig>,
    pub vhost_user_blk: Vec<VhostUserBlkConfig>,
    pub vfio_user: Vec<VfioUserConfig>,
    /// `--device vfio,...`: host devices through the kernel's VFIO.
    pub vfio: Vec<VfioConfig>,
    pub exit_stats: bool,
    /// `--qmp`: the QMP socket's path.
    pub qmp: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernel: None,
            initrd: None,
            cmdline: None,
            memory: 512 << 20,
            hotplug_size: 0,
            slots: 0,
            cpus: 1,
            serial: Serial::Stdout,
            iothreads: Vec::new(),
            disks: Vec::new(),
            vhost_user_blk: Vec::new(),
            vfio_user: Vec::new(),
            vfio: Vec::new(),
            exit_stats: false,
            qmp: None,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("{0} needs a value")]
    Missing(String),
    #[error("unknown option {0:?} (see --help)")]
    Unknown(String),
    #[error("--memory: {0:?} is not a size (use e.g. 512M, 2G, or size=512M,hotplug_size=4G,slots=8 with both or neither of hotplug_size and slots)")]
    Size(String),
    #[error("--cpus: {0:?} is not a number from 1 to 64")]
    Cpus(String),
    #[error("--serial: {0:?} is not stdout, file=PATH or none")]
    Serial(String),
    #[error("--iothread: {0:?} is not id=NAME (letters, digits, - and _)")]
    IoThread(String),
    #[error("--disk: {0}")]
    Disk(String),
    #[error("--vhost-user-blk: {0}")]
    VhostUserBlk(String),
    #[error("--qmp: {0}")]
    Qmp(String),
    #[error("--device: {0}")]
    Device(String),
    #[error("help requested")]
    Help,
}

/// Parses a size with an optional K, M, G or T suffix (binary units).
pub fn parse_size(s: &str) -> Option<u64> {
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        b'T' | b't' => (&s[..s.len() - 1], 40),
        _ => (s, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Options, CliError> {
    let mut o = Options::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // Accept both `--opt value` and `--opt=value`.
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| CliError::Missing(name.to_string()))
        };
        match name.as_str() {
            "-h" | "--help" => return Err(CliError::Help),
            "--kernel" => o.kernel = Some(value(&name)?.into()),
            "--initrd" => o.initrd = Some(value(&name)?.into()),
            "--cmdline" => o.cmdline = Some(value(&name)?),
            "--memory" => {
                let v = value(&name)?;
                if v.contains('=') {
                    parse_memory(&v, &mut o)?;
                } else {
                    o.memory = parse_size(&v).ok_or(CliError::Size(v))?;
                }
            }
            "--cpus" => {
                let v = value(&name)?;
                o.cpus = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=64).contains(n))
                    .ok_or(CliError::Cpus(v))?;
            }
            "--serial" => {
                let v = value(&name)?;
                o.serial = match v.as_str() {
                    "stdout" => Serial::Stdout,
                    "none" => Serial::None,
                    _ => match v.strip_prefix("file=") {
                        Some(p) if !p.is_empty() => Serial::File(p.into()),
                        _ => return Err(CliError::Serial(v)),
                    },
                };
            }
            "--iothread" => {
                let v = value(&name)?;
                match v.strip_prefix("id=") {
                    Some(id) if valid_id(id) => o.iothreads.push(id.into()),
                    _ => return Err(CliError::IoThread(v)),
                }
            }
            "--disk" => o.disks.push(parse_disk(&value(&name)?)?),
            "--vhost-user-blk" => o.vhost_user_blk.push(parse_vhost_user_blk(&value(&name)?)?),
            "--device" => match parse_device(&value(&name)?)? {
                DeviceConfig::VfioUser(c) => o.vfio_user.push(c),
                DeviceConfig::Vfio(c) => o.vfio.push(c),
            },
            "--exit-stats" => o.exit_stats = true,
            "--qmp" => o.qmp = Some(parse_qmp(&value(&name)?)?),
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    Ok(o)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn on_off(key: &str, v: &str) -> Result<bool, CliError> {
    match v {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(CliError::Disk(format!("{key}={v:?} is not on or off"))),
    }
}

/// `size=512M,hotplug_size=4G,slots=8` (QEMU's `-m 512M,maxmem=...,slots=`
/// in our own words; `maxmem=` is accepted as RAM + device memory).
fn parse_memory(s: &str, o: &mut Options) -> Result<(), CliError> {
    let bad = || CliError::Size(s.to_string());
    let mut maxmem = None;
    for item in s.split(',') {
        let (k, v) = item.split_once('=').ok_or_else(bad)?;
        match k {
            "size" => o.memory = parse_size(v).ok_or_else(bad)?,
            "hotplug_size" => o.hotplug_size = parse_size(v).ok_or_else(bad)?,
            "maxmem" => maxmem = Some(parse_size(v).ok_or_else(bad)?),
            "slots" => {
                o.slots = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=256).contains(n))
                    .ok_or_else(bad)?
            }
            _ => return Err(bad()),
        }
    }
    if let Some(m) = maxmem {
        o.hotplug_size = m.checked_sub(o.memory).ok_or_else(bad)?;
    }
    if (o.hotplug_size > 0) != (o.slots > 0) {
        return Err(bad());
    }
    Ok(())
}

/// `path=...,readonly=on,iothread=io0,num_queues=2,queue_size=256,serial=S`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, CliError> {
    let mut d = DiskConfig::default();
    let mut path = None;
    for item in s.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            return Err(CliError::Disk(format!("{item:?} is not key=value")));
        };
        let number = |lo: u16, hi: u16| {
            v.parse::<u16>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| {
                    CliError::Disk(format!("{k}={v:?} is not a number from {lo} to {hi}"))
                })
        };
        match k {
            "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
            "readonly" => d.readonly = on_off(k, v)?,
            "direct" => d.direct = on_off(k, v)?,
            "iothread" if valid_id(v) => d.iothreads.push(v.into()),
            "iothread" => return Err(CliError::Disk(format!("iothread={v:?} is not an id"))),
            "num_queues" | "num-queues" => d.num_queues = number(1, 64)?,
            "queue_size" | "queue-size" => {
                d.queue_size = number(2, 1024)?;
                if !d.queue_size.is_power_of_two() {
                    return Err(CliError::Disk(format!("{k}={v:?} is not a power of two")));
                }
            }
            "serial" if v.len() <= 20 => d.serial = v.into(),
            "serial" => {
                return Err(CliError::Disk(format!(
                    "serial={v:?} is longer than 20 bytes"
                )))
            }
            _ => return Err(CliError::Disk(format!("unknown or empty key {k:?}"))),
        }
    }
    d.path = path.ok_or_else(|| CliError::Disk("path=PATH is missing".into()))?;
    Ok(d)
}

/// `socket=PATH,num_queues=N,queue_size=N,timeout=SECS`.
pub fn parse_vhost_user_blk(s: &str) -> Result<VhostUserBlkConfig, CliError> {
    let mut c = VhostUserBlkConfig::default();
    let mut socket = None;
    let bad = CliError::VhostUserBlk;
    for item in s.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            return Err(bad(format!("{item:?} is not key=value")));
        };
        let number = |lo: u64, hi: u64| {
            v.parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad(format!("{k}={v:?} is not a number from {lo} to {hi}")))
        };
        match k {
            "socket" | "path" if !v.is_empty() => socket = Some(PathBuf::from(v)),
            "num_queues" | "num-queues" => c.num_queues = number(1, 64)? as u16,
            "queue_size" | "queue-size" => {
                c.queue_size = number(2, 1024)? as u16;
                if !c.queue_size.is_power_of_two() {
                    return Err(bad(format!("{k}={v:?} is not a power of two")));
                }
            }
            "timeout" => c.timeout = std::time::Duration::from_secs(number(0, 3600)?),
            "reconnect" => c.reconnect = std::time::Duration::from_secs(number(0, 3600)?),
            _ => return Err(bad(format!("unknown or empty key {k:?}"))),
        }
    }
    c.socket = socket.ok_or_else(|| bad("socket=PATH is missing".into()))?;
    Ok(c)
}

/// `PATH` or QEMU's `unix:PATH[,server=on|server][,wait=off|nowait]`.
pub fn parse_qmp(s: &str) -> Result<PathBuf, CliError> {
    let bad = |m: String| Err(CliError::Qmp(m));
    let Some(rest) = s.strip_prefix("unix:") else {
        if s.is_empty() || s.contains(',') {
            return bad(format!("{s:?} is not PATH or unix:PATH,server=on,wait=off"));
        }
        return Ok(PathBuf::from(s));
    };
    let mut items = rest.split(',');
    let path = items.next().unwrap_or_default();
    if path.is_empty() {
        return bad("unix: needs a path".into());
    }
    for item in items {
        match item {
            "server" | "server=on" | "server=true" | "nowait" | "wait=off" | "wait=false" => {}
            "server=off" | "server=false" => {
                return bad("server=off is not supported (the VMM listens)".into())
            }
            "wait=on" | "wait=true" | "wait" => {
                return bad("wait=on is not supported (use wait=off)".into())
            }
            _ => return bad(format!("unknown option {item:?}")),
        }
    }
    Ok(PathBuf::from(path))
}

/// What `--device` adds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceConfig {
    VfioUser(VfioUserConfig),
    Vfio(VfioConfig),
}

/// `vfio-user,socket=PATH[,timeout=SECS]` or `vfio,host=BDF` /
/// `vfio,sysfsdev=PATH`.
pub fn parse_device(s: &str) -> Result<DeviceConfig, CliError> {
    let bad = CliError::Device;
    if let Some(rest) = s.strip_prefix("vfio,") {
        return parse_vfio(rest).map(DeviceConfig::Vfio);
    }
    let Some(rest) = s.strip_prefix("vfio-user,") else {
        return Err(bad(format!(
            "{s:?} is not vfio-user,socket=PATH or vfio,host=DDDD:BB:DD.F"
        )));
    };
    let mut c = VfioUserConfig::default();
    let mut socket = None;
    for item in rest.split(',') {
        match item.split_once('=') {
            Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
            Some(("timeout", v)) => {
                let secs = v.parse::<u64>().ok().filter(|n| (1..=3600).contains(n));
                let secs = secs.ok_or_else(|| bad(format!("timeout={v:?} is not 1 to 3600")))?;
                c.timeout = std::time::Duration::from_secs(secs);
            }
            _ => {
                return Err(bad(format!(
                    "vfio-user: {item:?} is not socket=PATH or timeout=SECS"
                )))
            }
        }
    }
    c.socket = socket.ok_or_else(|| bad("vfio-user: socket=PATH is missing".into()))?;
    Ok(DeviceConfig::VfioUser(c))
}

/// `host=DDDD:BB:DD.F` (domain optional) or `sysfsdev=PATH`, one of them.
fn parse_vfio(s: &str) -> Result<VfioConfig, CliError> {
    let bad = |m: String| CliError::Device(format!("vfio: {m}"));
    let mut found = None;
    for item in s.split(',') {
        let path = match item.split_once('=') {
            Some(("host", v)) => vmm_vfio::kernel::sysfs_path(v).map_err(|_| {
                bad(format!(
                    "host={v:?} is not a PCI address (DDDD:BB:DD.F or BB:DD.F)"
                ))
            })?,
            Some(("sysfsdev", v)) if v.starts_with('/') => PathBuf::from(v),
            Some(("sysfsdev", v)) => {
                return Err(bad(format!(
                    "sysfsdev={v:?} is not an absolute path (/sys/bus/pci/devices/...)"
                )))
            }
            _ => {
                return Err(bad(format!(
                    "{item:?} is not host=DDDD:BB:DD.F or sysfsdev=PATH"
                )))
            }
        };
        if found.is_some() {
            return Err(bad("give one of host= and sysfsdev=, once".into()));
        }
        found = Some(VfioConfig {
            sysfs: path,
            spec: item.into(),
        });
    }
    found.ok_or_else(|| bad("host=DDDD:BB:DD.F or sysfsdev=PATH is missing".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vfio_user_devices() {
        let o = parse(["--device", "vfio-user,socket=/s,timeout=2"].map(String::from)).unwrap();
        assert_eq!(o.vfio_user[0].socket, PathBuf::from("/s"));
        assert_eq!(o.vfio_user[0].timeout.as_secs(), 2);
        let e = parse(["--device", "vfio-user,timeout=2"].map(String::from)).unwrap_err();
        assert_eq!(e.to_string(), "--device: vfio-user: socket=PATH is missing");
        let e = parse(["--device=virtio-net,socket=/s".to_string()]).unwrap_err();
        assert!(
            e.to_string().contains("is not vfio-user,socket=PATH"),
            "{e}"
        );
    }

    #[test]
    fn kernel_vfio_devices_by_address_or_sysfs_path_and_bad_keys_named() {
        let o = p(&[
            "--device",
            "vfio,host=0000:01:00.0",
            "--device=vfio,sysfsdev=/sys/bus/pci/devices/0000:00:03.0",
            "--device",
            "vfio,host=02:1f.7",
        ])
        .unwrap();
        let paths: Vec<_> = o
            .vfio
            .iter()
            .map(|c| c.sysfs.display().to_string())
            .collect();
        assert_eq!(
            paths,
            [
                "/sys/bus/pci/devices/0000:01:00.0",
                "/sys/bus/pci/devices/0000:00:03.0",
                "/sys/bus/pci/devices/0000:02:1f.7",
            ]
        );
        assert_eq!(o.vfio[0].spec, "host=0000:01:00.0");
        for (bad, says) in [
            (
                "vfio,host=0000:01:00",
                "host=\"0000:01:00\" is not a PCI address",
            ),
            ("vfio,host=zz:00.0", "host=\"zz:00.0\" is not a PCI address"),
            (
                "vfio,sysfsdev=dev",
                "sysfsdev=\"dev\" is not an absolute path",
            ),
            ("vfio,colour=red", "\"colour=red\" is not host="),
            (
                "vfio,host=01:00.0,host=01:00.1",
                "one of host= and sysfsdev=",
            ),
            ("vfio,", "\"\" is not host="),
        ] {
            let e = p(&["--device", bad]).unwrap_err().to_string();
            assert!(
                e.starts_with("--device: vfio: ") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    fn p(args: &[&str]) -> Result<Options, CliError> {
        parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn options_parse_in_both_spellings() {
        let o = p(&[
            "--memory",
            "2G",
            "--cpus=4",
            "--kernel",
            "/k",
            "--serial=file=/tmp/s",
        ])
        .unwrap();
        assert_eq!(o.memory, 2 << 30);
        assert_eq!(o.cpus, 4);
        assert_eq!(o.kernel, Some(PathBuf::from("/k")));
        assert_eq!(o.serial, Serial::File("/tmp/s".into()));
        assert_eq!(p(&[]).unwrap(), Options::default());
    }

    #[test]
    fn bad_values_name_the_option() {
        assert_eq!(p(&["--memory", "12X"]), Err(CliError::Size("12X".into())));
        assert_eq!(
            p(&["--memory", "99999999999T"]),
            Err(CliError::Size("99999999999T".into()))
        );
        assert_eq!(p(&["--cpus", "0"]), Err(CliError::Cpus("0".into())));
        assert_eq!(p(&["--cpus", "65"]), Err(CliError::Cpus("65".into())));
        assert_eq!(p(&["--kernel"]), Err(CliError::Missing("--kernel".into())));
        assert_eq!(
            p(&["--frobnicate"]),
            Err(CliError::Unknown("--frobnicate".into()))
        );
        assert_eq!(
            p(&["--serial", "file="]),
            Err(CliError::Serial("file=".into()))
        );
        assert!(CliError::Size("x".into()).to_string().contains("--memory"));
    }

    #[test]
    fn disks_and_iothreads_parse_and_bad_values_are_named() {
        let o = p(&[
            "--iothread",
            "id=io0",
            "--iothread=id=io1",
            "--disk",
            "path=/d.img,readonly=on,iothread=io0,iothread=io1,num_queues=4,serial=abc",
        ])
        .unwrap();
        assert_eq!(o.iothreads, ["io0", "io1"]);
        let d = &o.disks[0];
        assert_eq!(d.path, PathBuf::from("/d.img"));
        assert!(d.readonly);
        assert_eq!(d.iothreads, ["io0", "io1"]);
        assert_eq!((d.num_queues, d.queue_size), (4, 256));
        assert_eq!(d.serial, "abc");
        for (bad, says) in [
            ("readonly=on", "path=PATH is missing"),
            (
                "path=/x,readonly=maybe",
                "readonly=\"maybe\" is not on or off",
            ),
            (
                "path=/x,num_queues=0",
                "num_queues=\"0\" is not a number from 1 to 64",
            ),
            (
                "path=/x,queue_size=100",
                "queue_size=\"100\" is not a power of two",
            ),
            (
                "path=/x,serial=123456789012345678901",
                "longer than 20 bytes",
            ),
            ("path=/x,colour=red", "unknown or empty key \"colour\""),
            ("path=/x,iothread=a b", "iothread=\"a b\" is not an id"),
            ("path=/x,junk", "\"junk\" is not key=value"),
        ] {
            let e = p(&["--disk", bad]).unwrap_err().to_string();
            assert!(e.starts_with("--disk: ") && e.contains(says), "{bad}: {e}");
        }
        let v = p(&["--vhost-user-blk", "socket=/s,num_queues=2,timeout=3"]).unwrap();
        let v = &v.vhost_user_blk[0];
        assert_eq!((v.num_queues, v.timeout.as_secs()), (2, 3));
        let e = p(&["--vhost-user-blk", "num_queues=2"]).unwrap_err();
        assert_eq!(e.to_string(), "--vhost-user-blk: socket=PATH is missing");
        assert_eq!(
            p(&["--iothread", "io0"]),
            Err(CliError::IoThread("io0".into()))
        );
    }

    #[test]
    fn memory_with_hotplug_parses_and_half_settings_are_refused() {
        let o = p(&["--memory", "size=256M,hotplug_size=4G,slots=8"]).unwrap();
        assert_eq!((o.memory, o.hotplug_size, o.slots), (256 << 20, 4 << 30, 8));
        let o = p(&["--memory=size=1G,maxmem=3G,slots=2"]).unwrap();
        assert_eq!(o.hotplug_size, 2 << 30);
        for bad in [
            "size=1G,slots=2",
            "size=1G,hotplug_size=1G",
            "size=1G,slots=999",
            "colour=1",
        ] {
            assert_eq!(
                p(&["--memory", bad]),
                Err(CliError::Size(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn qmp_takes_a_path_or_qemus_spelling() {
        let q = |a: &str| p(&["--qmp", a]).map(|o| o.qmp);
        assert_eq!(q("/tmp/q.sock"), Ok(Some("/tmp/q.sock".into())));
        assert_eq!(
            q("unix:/tmp/q.sock,server=on,wait=off"),
            Ok(Some("/tmp/q.sock".into()))
        );
        assert_eq!(q("unix:/q,server,nowait"), Ok(Some("/q".into())));
        for (bad, says) in [
            ("unix:/q,wait=on", "wait=on is not supported"),
            ("unix:/q,colour=red", "unknown option \"colour=red\""),
            ("unix:", "unix: needs a path"),
            ("tcp:1,2", "is not PATH"),
        ] {
            let e = q(bad).unwrap_err().to_string();
            assert!(e.starts_with("--qmp: ") && e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1G"), None);
    }
}
