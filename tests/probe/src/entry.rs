//! The ring-0 part of the probe, in assembly so that no compiled code runs in
//! ring 0 (under PVM every ring-0 instruction is emulated, and slowly).
//!
//! Entered per the Linux 64-bit boot protocol (long mode, flat segments,
//! identity paging, interrupts off, RSI = boot_params), `_start`:
//! 1. loads its own GDT (kernel code/data, user data/code, a TSS) and an IDT
//!    whose 32 exception gates report `0x100 | vector` on the debug-exit
//!    port, so a fault ends the run with a recognisable status, except
//!    #BP: `int3` (its gate open to ring 3) toggles IF for ring 3, where
//!    `sti`/`cli` fault under PVM (hardware IOPL 0); vector 0x84
//!    (`intr::COUNTED`) counts the interrupt in `interrupts_taken` and EOIs
//!    the local APIC; every other vector's gate is not present;
//! 2. enables SSE (CR0.MP, CR4.OSFXSR/OSXMMEXCPT) for compiled ring-3 code;
//! 3. switches to its own page tables: an identity map of the first 8 GiB
//!    in 2 MiB pages, all user-accessible, the GiB below 4 GiB (PCI hole, IOAPIC,
//!    local APIC at 0xfee00000) uncached. The tables are built by the
//!    assembler into .data, so setting them up costs no instructions;
//! 4. `iretq`s to ring 3 with IOPL 3 and interrupts off and calls
//!    `probe_main(boot_params)` there.
//!
//! Every vCPU may enter here at once (the VMM starts application
//! processors at the entry for the probe). Each finds its index in its
//! initial APIC id (CPUID leaf 1) and takes its own TSS descriptor (a busy
//! TSS cannot be loaded twice), TSS, ring-0 stack and ring-3 stack; the I/O
//! bitmap, GDT, IDT and page tables are shared. CPU 0 runs `probe_main`,
//! the others `ap_main(index)`. Nothing touches the stack before it is the
//! CPU's own.
//!
//! The ring-0 stack's top is 0x200000: after a CPU exception the frame
//! (error code if any, RIP, CS, RFLAGS, RSP, SS) ends there.
//!
//! Port I/O from ring 3 is granted twice: by IOPL 3 and by an all-zero I/O
//! permission bitmap in the TSS. PVM keeps the hardware IOPL at 0 and drops
//! the guest's IOPL on the way to ring 3, so there every `in`/`out` faults
//! into KVM's emulator, which then allows it through the guest's bitmap.

use core::arch::global_asm;

global_asm!(
    r#"
    .set KERNEL_CS, 0x08
    .set KERNEL_DS, 0x10
    .set USER_DS, 0x1b
    .set USER_CS, 0x23
    .set TSS_SEL, 0x28
    .set DEBUG_EXIT_PORT, 0x501
    .set MAX_CPUS, 8
    .set TSS_STRIDE, 128
    .set AP_KSTACK, 16384
    .set AP_USTACK, 65536

    .section .text.entry, "ax"
    .code64
    .global _start
_start:
    cli
    mov %rsi, %r15
    /* CPU index: the initial APIC id, CPUID.1:EBX[31:24]. */
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %ebx, %r14d
    cmp $MAX_CPUS, %r14d
    jae park
    test %r14d, %r14d
    jnz 4f
    lea kernel_stack_top(%rip), %rsp
    jmp 5f
4:
    lea ap_kstacks(%rip), %rsp
    mov %r14, %rax
    shl $14, %rax
    add %rax, %rsp
5:
    /* This CPU's TSS: rsp0 and the offset of the shared I/O bitmap. */
    lea tss_array(%rip), %rax
    mov %r14, %rcx
    shl $7, %rcx
    add %rcx, %rax
    mov %rsp, 4(%rax)
    lea io_bitmap(%rip), %rcx
    sub %rax, %rcx
    mov %cx, 102(%rax)
    /* Its descriptor: limit = bitmap offset + 8192 (the terminator),
       type 0x89, base split over the fields. */
    mov %rax, %rdx
    and $0xffffff, %edx
    shl $16, %rdx
    mov %rax, %r8
    shr $24, %r8
    and $0xff, %r8
    shl $56, %r8
    or %r8, %rdx
    add $8192, %rcx
    and $0xffff, %ecx
    or %rcx, %rdx
    movabs $0x0000890000000000, %r8
    or %r8, %rdx
    lea gdt_tss(%rip), %rdi
    mov %r14, %rcx
    shl $4, %rcx
    add %rcx, %rdi
    mov %rdx, (%rdi)
    shr $32, %rax
    mov %rax, 8(%rdi)
    lgdt gdt_pointer(%rip)
    mov $KERNEL_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    pushq $KERNEL_CS
    lea 1f(%rip), %rax
    push %rax
    lretq
1:
    mov %r14d, %eax
    shl $4, %eax
    add $TSS_SEL, %eax
    ltr %ax

    /* 32 interrupt gates, one per 16-byte exception stub. */
    lea idt(%rip), %rdi
    lea exception_stubs(%rip), %rax
    mov $32, %ecx
2:
    mov %eax, %edx
    and $0xffff, %edx
    or $(KERNEL_CS << 16), %edx
    mov %edx, (%rdi)
    mov %eax, %edx
    and $0xffff0000, %edx
    or $0x8e00, %edx
    mov %edx, 4(%rdi)
    mov %rax, %rdx
    shr $32, %rdx
    mov %rdx, 8(%rdi)
    add $16, %rax
    add $16, %rdi
    dec %ecx
    jnz 2b
    /* #BP (DPL 3) toggles IF for ring 3; vector 0x84 counts. */
    lea idt + 3 * 16(%rip), %rdi
    lea if_toggle_stub(%rip), %rax
    mov $0xee00, %ecx
    call set_gate
    lea idt + 0x84 * 16(%rip), %rdi
    lea counted_stub(%rip), %rax
    mov $0x8e00, %ecx
    call set_gate
    lidt idt_pointer(%rip)

    /* SSE for compiled code: CR0.MP on, EM and TS off; CR4.OSFXSR, OSXMMEXCPT. */
    mov %cr0, %rax
    and $~0xc, %rax
    or $0x2, %rax
    mov %rax, %cr0
    mov %cr4, %rax
    or $0x600, %rax
    mov %rax, %cr4

    lea pml4(%rip), %rax
    mov %rax, %cr3

    /* To ring 3: IOPL 3, IF 0; CPU 0 to probe_main, the others to
       ap_main(index). */
    test %r14d, %r14d
    jnz 6f
    lea user_stack_top(%rip), %rax
    lea ring3_start(%rip), %rbx
    mov %r15, %rdi
    jmp 7f
6:
    lea ap_ustacks(%rip), %rax
    mov %r14, %rcx
    shl $16, %rcx
    add %rcx, %rax
    lea ring3_ap(%rip), %rbx
    mov %r14, %rdi
7:
    pushq $USER_DS
    push %rax
    pushq $0x3002
    pushq $USER_CS
    push %rbx
    iretq

ring3_start:
    mov $USER_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    xor %ebp, %ebp
    call probe_main
    ud2

ring3_ap:
    mov $USER_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    xor %ebp, %ebp
    call ap_main
    ud2

park:
    hlt
    jmp park

    /* Exception stubs, 16 bytes apart: report 0x100 | vector and stop. */
    .balign 16
exception_stubs:
    .set vector, 0
    .rept 32
    .balign 16
    push $vector
    jmp exception_common
    .set vector, vector + 1
    .endr

    /* The interrupt gate at %rdi for the handler at %rax, type and DPL
       in %ecx (0x8e00: ring 0 only; 0xee00: ring 3 may raise it). */
set_gate:
    mov %eax, %edx
    and $0xffff, %edx
    or $(KERNEL_CS << 16), %edx
    mov %edx, (%rdi)
    mov %eax, %edx
    and $0xffff0000, %edx
    or %ecx, %edx
    mov %edx, 4(%rdi)
    shr $32, %rax
    mov %rax, 8(%rdi)
    ret

    /* int3: back to the caller with IF flipped (RFLAGS is 16 bytes into
       the frame). */
if_toggle_stub:
    xorq $0x200, 16(%rsp)
    iretq

    /* Vector 0x84: count it, EOI the local APIC, return. */
counted_stub:
    push %rax
    lock incl interrupts_taken(%rip)
    mov $0xfee000b0, %eax
    movl $0, (%rax)
    pop %rax
    iretq

exception_common:
    pop %rax
    or $0x100, %eax
    mov $DEBUG_EXIT_PORT, %edx
    out %eax, %dx
3:
    hlt
    jmp 3b

    .section .data, "aw"
    .balign 4
    .global interrupts_taken
interrupts_taken:               /* vector 0x84 taken, by counted_stub */
    .long 0

    .balign 16
gdt:
    .quad 0                     /* 0x00 null */
    .quad 0x00af9b000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff    /* 0x10 kernel data */
    .quad 0x00cff3000000ffff    /* 0x18 user data */
    .quad 0x00affb000000ffff    /* 0x20 user code, 64-bit */
gdt_tss:
    .fill MAX_CPUS * 2, 8, 0    /* 0x28 + 16k: CPU k's TSS, filled in by _start */
gdt_end:

    .balign 16
    .word 0
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .balign 16
    .word 0
idt_pointer:
    .word 256 * 16 - 1
    .quad idt

    /* One 104-byte TSS per CPU (rsp0 and the bitmap offset filled in by
       _start), then the I/O bitmap they share. */
    .balign 128
tss_array:
    .fill MAX_CPUS * TSS_STRIDE, 1, 0
io_bitmap:
    .fill 8192, 1, 0            /* every port allowed */
    .byte 0xff                  /* the terminator the CPU reads past the end */
    /* Identity map of 0..8 GiB in 2 MiB pages, user-accessible: RAM and
       the PCI hole below 4 GiB, hot-added DIMMs from 4 GiB up. */
    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .set table, 0
    .rept 8
    .quad pd + table + 0x7
    .set table, table + 0x1000
    .endr
    .fill 504, 8, 0
pd:
    .set page, 0
    .rept 3 * 512
    .quad page + 0x87           /* P, RW, US, PS: write-back */
    .set page, page + 0x200000
    .endr
    .rept 512
    .quad page + 0x9f           /* P, RW, US, PWT, PCD, PS: uncached */
    .set page, page + 0x200000
    .endr
    .rept 4 * 512
    .quad page + 0x87           /* 4-8 GiB: write-back */
    .set page, page + 0x200000
    .endr

    .section .bss, "aw", @nobits
    .balign 4096
idt:
    .skip 256 * 16
    .balign 4096
user_stack:
    .skip 64 * 1024
user_stack_top:
    .balign 4096
ap_kstacks:                     /* CPU k's ring-0 stack top: ap_kstacks + 16K * k */
    .skip MAX_CPUS * AP_KSTACK
    .balign 4096
ap_ustacks:                     /* CPU k's ring-3 stack top: ap_ustacks + 64K * k */
    .skip MAX_CPUS * AP_USTACK

    .section .kernel_stack, "aw", @nobits
kernel_stack:
    .skip 4096
kernel_stack_top:               /* 0x200000, fixed by link.ld */
"#,
    options(att_syntax)
);
