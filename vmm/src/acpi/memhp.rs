//! AML for ACPI memory hotplug, after QEMU's (hw/acpi/memory_hotplug.c):
//! `\_SB.MHPC` owns the register block at 0xa00 and the methods that read
//! it; one `PNP0C80` device per slot (`\_SB.MPxx`) asks them for its
//! status, resources, proximity, `_OST` and `_EJ0`; `\_GPE._E03` (GPE0 bit
//! 3) scans the slots and notifies the OS of insertions (device check) and
//! removal requests (eject request).

use acpi_tables::aml::{
    self, Acquire, Add, AddressSpace, AddressSpaceCacheable, Arg, CreateQWordField, Device,
    EISAName, Else, Equal, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If,
    LessThan, Local, Method, MethodCall, Mutex, Name, Notify, OpRegion, OpRegionSpace, Or, Path,
    Release, ResourceTemplate, Return, Scope, ShiftLeft, Store, Subtract, ToInteger, While, IO,
};
use acpi_tables::Aml;

use crate::devices::mem_hotplug;

fn bytes(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

fn p(s: &str) -> Path {
    Path::new(s)
}

/// `\_SB.MHPC` with its methods.
fn controller(slots: usize) -> Vec<u8> {
    let port = mem_hotplug::PORT as u16;
    let len = mem_hotplug::SIZE as u16;
    let hid = EISAName::new("PNP0A06");
    let io = IO::new(port, port, 0, len as u8);
    let crs = ResourceTemplate::new(vec![&io]);
    let mdnr = slots;
    let (port_aml, len_aml) = (u64::from(port), u64::from(len));
    let region = OpRegion::new(p("HPMR"), OpRegionSpace::SystemIO, &port_aml, &len_aml);
    let dwords = |names: &[&str]| {
        names
            .iter()
            .map(|n| FieldEntry::Named(n.as_bytes().try_into().unwrap_or(*b"XXXX"), 32))
            .collect::<Vec<_>>()
    };
    let read_regs = Field::new(
        p("HPMR"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        dwords(&["MRBL", "MRBH", "MRLL", "MRLH", "MPX_"]),
    );
    let status = Field::new(
        p("HPMR"),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Reserved(160),
            FieldEntry::Named(*b"MES_", 1),
            FieldEntry::Named(*b"MINS", 1),
            FieldEntry::Named(*b"MRMV", 1),
            FieldEntry::Named(*b"MEJ_", 1),
        ],
    );
    let write_regs = Field::new(
        p("HPMR"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        dwords(&["MSEL", "MOEV", "MOSC"]),
    );
    // Every name the methods use, bound once (the AML builders borrow).
    let [msel, mins, mrmv, mes, mej, mpx, moev, mosc, mdnr_p, mrbl, mrbh, mrll, mrlh] = [
        "MSEL", "MINS", "MRMV", "MES_", "MEJ_", "MPX_", "MOEV", "MOSC", "MDNR", "MRBL", "MRBH",
        "MRLL", "MRLH",
    ]
    .map(p);
    let [mr64_p, minv_p, maxv_p, lenv_p] = ["MR64", "MINV", "MAXV", "LENV"].map(p);
    let (arg0, arg1, arg2) = (Arg(0), Arg(1), Arg(2));
    let (l0, l1, one, zero) = (Local(0), Local(1), aml::ONE, aml::ZERO);
    let mutex = Mutex::new(p("MLCK"), 0);
    let acquire = Acquire::new(p("MLCK"), 0xffff);
    let release = Release::new(p("MLCK"));
    let select = Store::new(&msel, &arg0);

    // MSCN: notify every slot with a pending insert or remove event.
    let check = Store::new(&mins, &one);
    let notify_insert = MethodCall::new(p("MTFY"), vec![&l0, &one]);
    let mins_set = Equal::new(&mins, &one);
    let insert = If::new(&mins_set, vec![&notify_insert, &check]);
    let eject_req = 3u8;
    let clear_rmv = Store::new(&mrmv, &one);
    let notify_remove = MethodCall::new(p("MTFY"), vec![&l0, &eject_req]);
    let mrmv_set = Equal::new(&mrmv, &one);
    let remove = If::new(&mrmv_set, vec![&notify_remove, &clear_rmv]);
    let sel_l0 = Store::new(&msel, &l0);
    let inc = Add::new(&l0, &l0, &one);
    let more = LessThan::new(&l0, &mdnr_p);
    let scan = While::new(&more, vec![&sel_l0, &insert, &remove, &inc]);
    let zero_l0 = Store::new(&l0, &zero);
    let ret_one = Return::new(&one);
    let mscn = Method::new(
        p("MSCN"),
        0,
        true,
        vec![&zero_l0, &acquire, &scan, &release, &ret_one],
    );

    // MRST(slot): 0xF when the DIMM is enabled, else 0.
    let fifteen = 0xfu8;
    let present = Store::new(&l0, &fifteen);
    let absent = Store::new(&l0, &zero);
    let enabled = Equal::new(&mes, &one);
    let is_on = If::new(&enabled, vec![&present]);
    let not_on = Else::new(vec![&absent]);
    let ret_l0 = Return::new(&l0);
    let mrst = Method::new(
        p("MRST"),
        1,
        true,
        vec![&acquire, &select, &is_on, &not_on, &release, &ret_l0],
    );

    // MCRS(slot): a QWordMemory from base and length (64-bit integers:
    // the DSDT is revision 6).
    let cache = AddressSpaceCacheable::Cacheable;
    let qword = AddressSpace::new_memory(cache, true, 0u64, 0xffff_ffff_ffff_fffe_u64, None);
    let template = ResourceTemplate::new(vec![&qword]);
    let mr64 = Name::new(p("MR64"), &template);
    let (min_at, max_at, len_at) = (14u8, 22u8, 38u8);
    let minv = CreateQWordField::new(&minv_p, &mr64_p, &min_at);
    let maxv = CreateQWordField::new(&maxv_p, &mr64_p, &max_at);
    let lenv = CreateQWordField::new(&lenv_p, &mr64_p, &len_at);
    let thirty_two = 32u8;
    let hi_base = ShiftLeft::new(&l0, &mrbh, &thirty_two);
    let base = Or::new(&minv_p, &l0, &mrbl);
    let hi_len = ShiftLeft::new(&l1, &mrlh, &thirty_two);
    let length = Or::new(&lenv_p, &l1, &mrll);
    let end = Add::new(&l0, &minv_p, &lenv_p);
    let last = Subtract::new(&maxv_p, &l0, &one);
    let ret_mr64 = Return::new(&mr64_p);
    let to_int = ToInteger::new(&msel, &arg0);
    let mcrs = Method::new(
        p("MCRS"),
        1,
        true,
        vec![
            &acquire, &to_int, &mr64, &minv, &maxv, &lenv, &hi_base, &base, &hi_len, &length, &end,
            &last, &release, &ret_mr64,
        ],
    );

    // MPXM(slot), MOST(slot, event, status), MEJ0(slot, flags).
    let pxm = Store::new(&l0, &mpx);
    let mpxm = Method::new(
        p("MPXM"),
        1,
        true,
        vec![&acquire, &select, &pxm, &release, &ret_l0],
    );
    let ev = Store::new(&moev, &arg1);
    let st = Store::new(&mosc, &arg2);
    let most = Method::new(
        p("MOST"),
        4,
        true,
        vec![&acquire, &select, &ev, &st, &release],
    );
    let ej = Store::new(&mej, &one);
    let mej0 = Method::new(p("MEJ0"), 2, true, vec![&acquire, &select, &ej, &release]);

    let hid_n = Name::new(p("_HID"), &hid);
    let uid_s = Name::new(p("_UID"), &"Memory hotplug resources");
    let crs_n = Name::new(p("_CRS"), &crs);
    let mdnr_n = Name::new(p("MDNR"), &mdnr);
    let dev = Device::new(
        p("MHPC"),
        vec![
            &hid_n,
            &uid_s,
            &crs_n,
            &mdnr_n,
            &region,
            &read_regs,
            &status,
            &write_regs,
            &mutex,
            &mscn,
            &mrst,
            &mcrs,
            &mpxm,
            &most,
            &mej0,
        ],
    );
    bytes(&dev)
}

/// `\_SB.MPxx` for each slot, and `\_SB.MTFY(slot, event)`.
fn slots(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let hid = EISAName::new("PNP0C80");
    let (a0, a1, a2) = (Arg(0), Arg(1), Arg(2));
    for i in 0..n {
        let name = format!("MP{i:02X}");
        let uid = i;
        let hid_n = Name::new(p("_HID"), &hid);
        let uid_n = Name::new(p("_UID"), &uid);
        let c_crs = MethodCall::new(p("\\_SB_.MHPC.MCRS"), vec![&uid]);
        let r_crs = Return::new(&c_crs);
        let crs = Method::new(p("_CRS"), 0, false, vec![&r_crs]);
        let c_sta = MethodCall::new(p("\\_SB_.MHPC.MRST"), vec![&uid]);
        let r_sta = Return::new(&c_sta);
        let sta = Method::new(p("_STA"), 0, false, vec![&r_sta]);
        let c_pxm = MethodCall::new(p("\\_SB_.MHPC.MPXM"), vec![&uid]);
        let r_pxm = Return::new(&c_pxm);
        let pxm = Method::new(p("_PXM"), 0, false, vec![&r_pxm]);
        let c_ost = MethodCall::new(p("\\_SB_.MHPC.MOST"), vec![&uid, &a0, &a1, &a2]);
        let ost = Method::new(p("_OST"), 3, false, vec![&c_ost]);
        let c_ej = MethodCall::new(p("\\_SB_.MHPC.MEJ0"), vec![&uid, &a0]);
        let ej0 = Method::new(p("_EJ0"), 1, false, vec![&c_ej]);
        let dev = Device::new(p(&name), vec![&hid_n, &uid_n, &crs, &sta, &pxm, &ost, &ej0]);
        out.extend(bytes(&dev));
    }
    let names: Vec<String> = (0..n).map(|i| format!("MP{i:02X}")).collect();
    let paths: Vec<Path> = names.iter().map(|s| p(s)).collect();
    let numbers: Vec<usize> = (0..n).collect();
    let (arg0, arg1) = (Arg(0), Arg(1));
    let preds: Vec<Equal> = numbers.iter().map(|i| Equal::new(&arg0, i)).collect();
    let notifies: Vec<Notify> = paths.iter().map(|d| Notify::new(d, &arg1)).collect();
    let ifs: Vec<If> = preds
        .iter()
        .zip(&notifies)
        .map(|(c, nt)| If::new(c, vec![nt as &dyn Aml]))
        .collect();
    let children: Vec<&dyn Aml> = ifs.iter().map(|i| i as &dyn Aml).collect();
    out.extend(bytes(&Method::new(p("MTFY"), 2, true, children)));
    out
}

/// The DSDT pieces: objects for `\_SB` and the `\_GPE` scope.
pub fn dsdt_parts(slots_n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut sb = controller(slots_n);
    sb.extend(slots(slots_n));
    let scan = MethodCall::new(p("\\_SB_.MHPC.MSCN"), vec![]);
    let e03 = Method::new(p("_E03"), 0, false, vec![&scan]);
    let gpe = Scope::new(p("\\_GPE"), vec![&e03]);
    (sb, bytes(&gpe))
}
