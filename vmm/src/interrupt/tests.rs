//! MSI-X and routes against a recording KVM.

use std::io;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_irq_routing_entry, KVM_IRQ_ROUTING_MSI};
use vmm_sys_util::eventfd::EventFd;

use super::routes::{GsiRouter, Routing, FIRST_MSI_GSI};
use super::{MsixConfig, MsixTable};

#[derive(Default)]
struct Seen {
    /// (gsi, addr, data) of the MSI routes in the last table.
    msi: Vec<(u32, u64, u32)>,
    irqchip_routes: usize,
    bound: Vec<u32>,
    /// GSIs with a level-triggered line and resample.
    lines: Vec<u32>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Seen>>);

impl Routing for Fake {
    fn set_routing(&mut self, table: &[kvm_irq_routing_entry]) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        s.msi.clear();
        s.irqchip_routes = 0;
        for e in table {
            if e.type_ == KVM_IRQ_ROUTING_MSI {
                // SAFETY: the msi member is the one set for MSI entries.
                let m = unsafe { e.u.msi };
                s.msi.push((
                    e.gsi,
                    u64::from(m.address_hi) << 32 | u64::from(m.address_lo),
                    m.data,
                ));
            } else {
                s.irqchip_routes += 1;
            }
        }
        Ok(())
    }
    fn irqfd(&mut self, _fd: &EventFd, gsi: u32, assign: bool) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        if assign {
            assert!(!s.bound.contains(&gsi), "GSI {gsi} bound twice");
            s.bound.push(gsi);
        } else {
            s.bound.retain(|g| *g != gsi);
        }
        Ok(())
    }
    fn irqfd_resample(
        &mut self,
        _fd: &EventFd,
        _resample: &EventFd,
        gsi: u32,
        assign: bool,
    ) -> io::Result<()> {
        let mut s = self.0.lock().unwrap();
        if assign {
            s.lines.push(gsi);
        } else {
            s.lines.retain(|g| *g != gsi);
        }
        Ok(())
    }
}

fn write32(t: &Arc<dyn crate::memory::RegionOps>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

#[test]
fn routes_keep_the_irqchip_defaults_and_add_msi_from_gsi_24() {
    let fake = Fake::default();
    let r = GsiRouter::new(fake.clone());
    let (gsi, _fd) = r
        .add(
            super::MsiMessage {
                addr: 0xfee0_0000,
                data: 0x41,
            },
            true,
        )
        .unwrap();
    assert_eq!(gsi, FIRST_MSI_GSI);
    let s = fake.0.lock().unwrap();
    assert_eq!(s.irqchip_routes, 24 + 16);
    assert_eq!(s.msi, vec![(24, 0xfee0_0000, 0x41)]);
    assert_eq!(s.bound, vec![24]);
}

#[test]
fn msix_vectors_bind_only_when_enabled_and_unmasked() {
    let fake = Fake::default();
    let t = MsixTable::new(GsiRouter::new(fake.clone()), 3).unwrap();
    let (table, pba) = t.regions();
    assert_eq!(t.sizes(), (48, 8));
    // Program vector 1 and unmask it: not live until MSI-X is enabled.
    write32(&table, 16, 0xfee0_1000);
    write32(&table, 20, 0);
    write32(&table, 24, 0x4021);
    write32(&table, 28, 0);
    assert!(fake.0.lock().unwrap().bound.is_empty());
    t.set_config(MsixConfig {
        enabled: true,
        function_mask: false,
    });
    let gsi1 = t.gsi(1).unwrap();
    {
        let s = fake.0.lock().unwrap();
        assert_eq!(s.bound, vec![gsi1]);
        assert!(s.msi.contains(&(gsi1, 0xfee0_1000, 0x4021)));
    }
    // The function mask unbinds everything; a raised vector is pending.
    t.set_config(MsixConfig {
        enabled: true,
        function_mask: true,
    });
    assert!(fake.0.lock().unwrap().bound.is_empty());
    t.vector_fd(1).unwrap().write(1).unwrap();
    let mut q = [0u8; 8];
    pba.read(0, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0b010, "vector 1 pending");
    // Unmasking binds the irqfd again (KVM then injects the pending count).
    t.set_config(MsixConfig {
        enabled: true,
        function_mask: false,
    });
    assert_eq!(fake.0.lock().unwrap().bound, vec![gsi1]);
    pba.read(0, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0, "no pending bit on a live vector");
    // Reading an entry back.
    let mut w = [0u8; 4];
    table.read(24, &mut w);
    assert_eq!(u32::from_le_bytes(w), 0x4021);
    let mut qw = [0u8; 8];
    table.read(16, &mut qw);
    assert_eq!(u64::from_le_bytes(qw), 0xfee0_1000);
}

#[test]
fn odd_table_accesses_are_ignored_without_harm() {
    let fake = Fake::default();
    let t = MsixTable::new(GsiRouter::new(fake.clone()), 2).unwrap();
    let (table, pba) = t.regions();
    table.write(2, &[1, 2]); // 2-byte write
    table.write(5, &[1, 2, 3, 4]); // unaligned
    table.write(4096, &[1, 2, 3, 4]); // past the table
    write32(&table, 12, 0xffff_fffe); // reserved control bits
    let mut w = [0u8; 4];
    table.read(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), 0, "only the mask bit is writable");
    let mut b = [0xffu8; 2];
    table.read(0, &mut b);
    assert_eq!(b, [0, 0]);
    let mut odd = [0xffu8; 3];
    pba.read(1, &mut odd);
    assert_eq!(odd, [0, 0, 0]);
}

#[test]
fn dropping_a_table_releases_its_routes() {
    let fake = Fake::default();
    let router = GsiRouter::new(fake.clone());
    let t = MsixTable::new(router.clone(), 4).unwrap();
    assert_eq!(fake.0.lock().unwrap().msi.len(), 4);
    drop(t);
    assert!(fake.0.lock().unwrap().msi.is_empty());
    let (gsi, _) = router.add(Default::default(), false).unwrap();
    assert_eq!(gsi, FIRST_MSI_GSI, "GSIs are reused");
}

#[test]
fn switching_to_a_new_vm_replays_the_table_and_the_bound_irqfds() {
    let old = Fake::default();
    let r = GsiRouter::new(old.clone());
    let msg = super::MsiMessage {
        addr: 0xfee0_0000,
        data: 0x42,
    };
    let (bound, _a) = r.add(msg, true).unwrap();
    let (masked, _b) = r.add(msg, false).unwrap();
    let new = Fake::default();
    r.switch(new.clone()).unwrap();
    let s = new.0.lock().unwrap();
    assert_eq!(s.msi.len(), 2, "both routes in the new table");
    assert_eq!(s.bound, vec![bound], "only the unmasked vector's irqfd");
    assert!(!s.bound.contains(&masked));
}

#[test]
fn msi_vectors_share_the_address_and_bind_only_while_enabled_and_unmasked() {
    use super::msi::{MsiConfig, MsiVectors};
    use super::MsiMessage;
    let fake = Fake::default();
    let router = GsiRouter::new(fake.clone());
    let msi = MsiVectors::new(router, 4).unwrap();
    let gsis: Vec<u32> = (0..4).map(|v| msi.gsi(v).unwrap()).collect();
    assert!(fake.0.lock().unwrap().bound.is_empty(), "nothing live yet");

    let mut c = MsiConfig {
        enabled: true,
        vectors: 4,
        msg: MsiMessage {
            addr: 0xfee0_1000,
            data: 0x4043, // low two bits belong to the vector number
        },
        mask: 0b0100,
    };
    msi.set_config(c);
    {
        let s = fake.0.lock().unwrap();
        let mut bound = s.bound.clone();
        bound.sort();
        assert_eq!(bound, [gsis[0], gsis[1], gsis[3]], "vector 2 is masked");
        for v in [0, 1, 3] {
            assert!(
                s.msi.contains(&(gsis[v], 0xfee0_1000, 0x4040 | v as u32)),
                "{:x?}",
                s.msi
            );
        }
    }
    // Two vectors enabled: 2 and 3 go quiet; disabling unbinds all.
    c.vectors = 2;
    msi.set_config(c);
    assert_eq!(fake.0.lock().unwrap().bound.len(), 2);
    c.enabled = false;
    msi.set_config(c);
    assert!(fake.0.lock().unwrap().bound.is_empty());
    // A vector raised while disabled stays pending until reset drops it.
    msi.vector_fd(0).unwrap().write(1).unwrap();
    msi.reset();
    assert!(msi.vector_fd(0).unwrap().read().is_err(), "reset drops it");
    drop(msi);
    assert!(fake.0.lock().unwrap().msi.is_empty(), "routes released");
}

#[test]
fn level_lines_bind_with_resample_follow_a_new_vm_and_refuse_msi_gsis() {
    let fake = Fake::default();
    let router = GsiRouter::new(fake.clone());
    let fd = || Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    router.bind_line(10, fd(), fd()).unwrap();
    assert!(
        router.bind_line(10, fd(), fd()).is_err(),
        "one line per pin"
    );
    assert!(router.bind_line(FIRST_MSI_GSI, fd(), fd()).is_err());
    assert_eq!(fake.0.lock().unwrap().lines, [10]);
    let next = Fake::default();
    router.switch(next.clone()).unwrap();
    assert_eq!(next.0.lock().unwrap().lines, [10], "rebound on the new VM");
    router.unbind_line(10);
    assert!(next.0.lock().unwrap().lines.is_empty());
}
