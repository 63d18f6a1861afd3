//! Register dumps for error reports.

use std::fmt::Write;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;

/// The vCPU's registers as text, or why they could not be read.
pub fn registers(vcpu: &VcpuFd) -> String {
    match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => format_registers(&regs, &sregs),
        (Err(e), _) | (_, Err(e)) => format!("registers unavailable: {e}"),
    }
}

fn segment(out: &mut String, name: &str, s: &kvm_segment) {
    let _ = writeln!(
        out,
        "{name:<3} sel={:#06x} base={:#x} limit={:#x} type={:#x} dpl={} l={} db={}",
        s.selector, s.base, s.limit, s.type_, s.dpl, s.l, s.db
    );
}

pub fn format_registers(r: &kvm_regs, s: &kvm_sregs) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rip={:#018x} rsp={:#018x} rflags={:#x}",
        r.rip, r.rsp, r.rflags
    );
    let _ = writeln!(
        out,
        "rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rbp={:#x}",
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp
    );
    let _ = writeln!(
        out,
        "r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15
    );
    let _ = writeln!(
        out,
        "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} apic_base={:#x}",
        s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.apic_base
    );
    segment(&mut out, "cs", &s.cs);
    segment(&mut out, "ss", &s.ss);
    segment(&mut out, "ds", &s.ds);
    segment(&mut out, "tr", &s.tr);
    let _ = write!(
        out,
        "gdt base={:#x} limit={:#x} idt base={:#x} limit={:#x}",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_interesting_registers() {
        let regs = kvm_regs {
            rip: 0x10_0000,
            rbx: 7,
            ..Default::default()
        };
        let mut sregs = kvm_sregs {
            cr3: 0x9000,
            ..Default::default()
        };
        sregs.cs.selector = 0x23;
        let text = format_registers(&regs, &sregs);
        assert!(text.contains("rip=0x0000000000100000"), "{text}");
        assert!(text.contains("rbx=0x7"), "{text}");
        assert!(text.contains("cr3=0x9000"), "{text}");
        assert!(text.contains("cs  sel=0x0023"), "{text}");
    }
}
