//! The connection: requests, checked replies, and the commands a VFIO
//! device model and the `vfio` memory listener need.

use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_PCI, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::wire::{self, Header, Reader, Writer, FLAG_ERROR, FLAG_REPLY, HEADER_SIZE};
use crate::backend::{BackendError, RegionInfo, VfioBackend};

/// Regions and IRQ indices believed from a server.
const MAX_REGIONS: u32 = 16;
const MAX_IRQS: u32 = 16;
const DMA_READ: u32 = 1;
const DMA_WRITE: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("cannot connect to the vfio-user server at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{command}: socket I/O with the vfio-user server failed")]
    Io {
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{command}: bad reply from the vfio-user server: {what}")]
    Protocol { command: &'static str, what: String },
    #[error("{command}: the vfio-user server refused it (errno {errno})")]
    Refused { command: &'static str, errno: u32 },
    #[error("the vfio-user device is not a PCI device (flags {0:#x})")]
    NotPci(u32),
    #[error("the connection to the vfio-user server is broken: {0}")]
    Broken(String),
}

pub struct UserClient {
    stream: UnixStream,
    next_id: u16,
    broken: Option<String>,
    regions: Vec<RegionInfo>,
    irqs: Vec<u32>,
}

impl UserClient {
    /// Connects, negotiates the version and reads the device's regions and
    /// IRQ counts. Every later wait on the server is bounded by `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<UserClient, UserError> {
        let connect = |source| UserError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect)?;
        stream.set_read_timeout(Some(timeout)).map_err(connect)?;
        stream.set_write_timeout(Some(timeout)).map_err(connect)?;
        let mut c = UserClient {
            stream,
            next_id: 0,
            broken: None,
            regions: Vec::new(),
            irqs: Vec::new(),
        };
        let json = br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576}}"#;
        let v = Writer::default().u16(0).u16(1).bytes(json).bytes(&[0]);
        c.call(wire::VERSION, &v.0, &[])?;
        let info = c.call(
            wire::DEVICE_GET_INFO,
            &Writer::default().u32(16).u32(0).u32(0).u32(0).0,
            &[],
        )?;
        let mut r = Reader(&info);
        let bad = |what: &str| UserError::Protocol {
            command: "DEVICE_GET_INFO",
            what: what.into(),
        };
        let (_, flags) = (r.u32(), r.u32().ok_or_else(|| bad("short reply"))?);
        let num_regions = r.u32().ok_or_else(|| bad("short reply"))?;
        let num_irqs = r.u32().ok_or_else(|| bad("short reply"))?;
        if flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(UserError::NotPci(flags));
        }
        for index in 0..num_regions.min(MAX_REGIONS) {
            let region = c.fetch_region(index)?;
            c.regions.push(region);
        }
        for index in 0..num_irqs.min(MAX_IRQS) {
            let body = Writer::default().u32(16).u32(0).u32(index).u32(0);
            let reply = c.call(wire::DEVICE_GET_IRQ_INFO, &body.0, &[])?;
            let mut r = Reader(&reply);
            r.take(12);
            c.irqs.push(r.u32().unwrap_or(0));
        }
        Ok(c)
    }

    fn fetch_region(&mut self, index: u32) -> Result<RegionInfo, UserError> {
        let body = Writer::default()
            .u32(32)
            .u32(0)
            .u32(index)
            .u32(0)
            .u64(0)
            .u64(0);
        let reply = self.call(wire::DEVICE_GET_REGION_INFO, &body.0, &[])?;
        let mut r = Reader(&reply);
        let fields = (r.u32(), r.u32(), r.u32(), r.u32(), r.u64());
        match fields {
            (Some(_), Some(flags), Some(_), Some(_), Some(size)) => {
                Ok(RegionInfo { index, flags, size })
            }
            _ => Err(UserError::Protocol {
                command: "DEVICE_GET_REGION_INFO",
                what: format!("{} bytes for region {index}", reply.len()),
            }),
        }
    }

    /// Whether an earlier failure broke the connection, and why.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Sends one command and returns the body of its reply. Any failure
    /// but a refusal breaks the connection for good.
    fn call(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> Result<Vec<u8>, UserError> {
        if let Some(why) = &self.broken {
            return Err(UserError::Broken(why.clone()));
        }
        let result = self.exchange(command, body, fds);
        if let Err(e) = &result {
            if !matches!(e, UserError::Refused { .. }) {
                self.broken = Some(e.to_string());
            }
        }
        result
    }

    fn exchange(&mut self, command: u16, body: &[u8], fds: &[RawFd]) -> Result<Vec<u8>, UserError> {
        let name = wire::name(command);
        let io = |source| UserError::Io {
            command: name,
            source,
        };
        let bad = |what: String| UserError::Protocol {
            command: name,
            what,
        };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let header = Header {
            id,
            command,
            size: (HEADER_SIZE + body.len()) as u32,
            flags: 0,
            error: 0,
        };
        let mut msg = header.encode().to_vec();
        msg.extend_from_slice(body);
        let mut sent = 0;
        if !fds.is_empty() {
            sent = self
                .stream
                .send_with_fds(&[&msg[..]], fds)
                .map_err(|e| io(std::io::Error::from_raw_os_error(e.errno())))?;
        }
        self.stream.write_all(&msg[sent..]).map_err(io)?;

        let mut raw = [0u8; HEADER_SIZE];
        self.stream.read_exact(&mut raw).map_err(io)?;
        let reply = Header::decode(&raw);
        if reply.flags & FLAG_REPLY == 0 || reply.id != id || reply.command != command {
            return Err(bad(format!(
                "header {reply:?} does not answer message {id} ({name})"
            )));
        }
        let len = (reply.size as usize)
            .checked_sub(HEADER_SIZE)
            .filter(|&n| n <= wire::MAX_BODY)
            .ok_or_else(|| bad(format!("message size {}", reply.size)))?;
        let mut reply_body = vec![0; len];
        self.stream.read_exact(&mut reply_body).map_err(io)?;
        if reply.flags & FLAG_ERROR != 0 {
            return Err(UserError::Refused {
                command: name,
                errno: reply.error,
            });
        }
        Ok(reply_body)
    }

    /// Maps `size` bytes of `fd` from `offset` at `iova` for the device.
    pub fn dma_map(
        &mut self,
        iova: u64,
        size: u64,
        fd: RawFd,
        offset: u64,
        readonly: bool,
    ) -> Result<(), UserError> {
        let flags = if readonly {
            DMA_READ
        } else {
            DMA_READ | DMA_WRITE
        };
        let body = Writer::default()
            .u32(32)
            .u32(flags)
            .u64(offset)
            .u64(iova)
            .u64(size);
        self.call(wire::DMA_MAP, &body.0, &[fd]).map(drop)
    }

    pub fn dma_unmap(&mut self, iova: u64, size: u64) -> Result<(), UserError> {
        let body = Writer::default().u32(24).u32(0).u64(iova).u64(size);
        self.call(wire::DMA_UNMAP, &body.0, &[]).map(drop)
    }
}

impl VfioBackend for UserClient {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        self.regions.get(index as usize).copied()
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.irqs.get(index as usize).copied().unwrap_or(0)
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), BackendError> {
        let body = Writer::default()
            .u64(offset)
            .u32(index)
            .u32(data.len() as u32);
        let reply = self.call(wire::REGION_READ, &body.0, &[])?;
        let mut r = Reader(&reply);
        r.take(12);
        let count = r.u32().map(|n| n as usize);
        match (count, r.take(data.len())) {
            (Some(n), Some(bytes)) if n == data.len() => {
                data.copy_from_slice(bytes);
                Ok(())
            }
            _ => {
                let what = format!("{} bytes for a read of {}", reply.len(), data.len());
                let e = UserError::Protocol {
                    command: "REGION_READ",
                    what,
                };
                self.broken = Some(e.to_string());
                Err(e.into())
            }
        }
    }

    fn region_write(&mut self, index: u32, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        let body = Writer::default()
            .u64(offset)
            .u32(index)
            .u32(data.len() as u32)
            .bytes(data);
        self.call(wire::REGION_WRITE, &body.0, &[])?;
        Ok(())
    }

    fn set_irq_eventfds(&mut self, index: u32, fds: &[RawFd]) -> Result<(), BackendError> {
        let data = if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD
        };
        let flags = data | VFIO_IRQ_SET_ACTION_TRIGGER;
        let count = fds.len() as u32;
        let body = Writer::default()
            .u32(20)
            .u32(flags)
            .u32(index)
            .u32(0)
            .u32(count);
        self.call(wire::DEVICE_SET_IRQS, &body.0, fds)?;
        Ok(())
    }

    /// SET_IRQS with ACTION_UNMASK and the eventfd, as VFIO_DEVICE_SET_IRQS
    /// takes it (the vfio-user protocol carries VFIO's flags unchanged);
    /// `None` sends no eventfd (count 0), which our server takes as
    /// removing it.
    fn set_irq_unmask_eventfd(
        &mut self,
        index: u32,
        fd: Option<RawFd>,
    ) -> Result<(), BackendError> {
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let flags = VFIO_IRQ_SET_ACTION_UNMASK | VFIO_IRQ_SET_DATA_EVENTFD;
        let body = Writer::default()
            .u32(20)
            .u32(flags)
            .u32(index)
            .u32(0)
            .u32(fds.len() as u32);
        self.call(wire::DEVICE_SET_IRQS, &body.0, &fds)?;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), BackendError> {
        self.call(wire::DEVICE_RESET, &[], &[])?;
        Ok(())
    }
}
