//! Command-line options of the `vmm` binary, with errors that name the
//! option and the bad value.

use std::path::PathBuf;

pub const USAGE: &str = "\
usage: vmm [options]

  --kernel PATH      kernel to boot: an ELF (vmlinux, the probe) or a bzImage;
                     without it the built-in probe guest runs
  --initrd PATH      initial ramdisk
  --cmdline TEXT     kernel command line (default: console=ttyS0, and
                     probe=none for the built-in probe)
  --memory SIZE      guest RAM, e.g. 512M or 2G (default 512M)
  --cpus N           vCPUs, 1 to 64 (default 1)
  --serial WHERE     COM1 output: stdout (default), file=PATH, or none
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
    pub cpus: u8,
    pub serial: Serial,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernel: None,
            initrd: None,
            cmdline: None,
            memory: 512 << 20,
            cpus: 1,
            serial: Serial::Stdout,
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error("{0} needs a value")]
    Missing(String),
    #[error("unknown option {0:?} (see --help)")]
    Unknown(String),
    #[error("--memory: {0:?} is not a size (use e.g. 512M or 2G)")]
    Size(String),
    #[error("--cpus: {0:?} is not a number from 1 to 64")]
    Cpus(String),
    #[error("--serial: {0:?} is not stdout, file=PATH or none")]
    Serial(String),
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
                o.memory = parse_size(&v).ok_or(CliError::Size(v))?;
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
            _ => return Err(CliError::Unknown(arg)),
        }
    }
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("-1G"), None);
    }
}
