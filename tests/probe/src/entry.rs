//! The ring-0 part of the probe, in assembly so that no compiled code runs in
//! ring 0 (under PVM every ring-0 instruction is emulated, and slowly).
//!
//! Entered per the Linux 64-bit boot protocol (long mode, flat segments,
//! identity paging, interrupts off, RSI = boot_params), `_start`:
//! 1. loads its own GDT (kernel code/data, user data/code, a TSS) and an IDT
//!    whose 32 exception gates report `0x100 | vector` on the debug-exit
//!    port, so a fault ends the run with a recognisable status;
//! 2. enables SSE (CR0.MP, CR4.OSFXSR/OSXMMEXCPT) for compiled ring-3 code;
//! 3. switches to its own page tables: an identity map of the first 4 GiB
//!    in 2 MiB pages, all user-accessible, the top GiB (PCI hole, IOAPIC,
//!    local APIC at 0xfee00000) uncached. The tables are built by the
//!    assembler into .data, so setting them up costs no instructions;
//! 4. `iretq`s to ring 3 with IOPL 3 and interrupts off and calls
//!    `probe_main(boot_params)` there.
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

    .section .text.entry, "ax"
    .code64
    .global _start
_start:
    cli
    mov %rsi, %r15
    lea kernel_stack_top(%rip), %rsp

    /* TSS descriptor: limit 104 + 8192 (the I/O bitmap), type 0x89,
       base split over the fields. */
    lea tss(%rip), %rax
    mov %rax, %rdx
    and $0xffffff, %edx
    shl $16, %rdx
    mov %rax, %rcx
    shr $24, %rcx
    shl $56, %rcx
    or %rcx, %rdx
    movabs $0x0000890000002068, %rcx
    or %rcx, %rdx
    mov %rdx, gdt_tss(%rip)
    shr $32, %rax
    mov %rax, gdt_tss+8(%rip)

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
    mov $TSS_SEL, %eax
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

    /* To ring 3: IOPL 3, IF 0. */
    pushq $USER_DS
    lea user_stack_top(%rip), %rax
    push %rax
    pushq $0x3002
    pushq $USER_CS
    lea ring3_start(%rip), %rax
    push %rax
    mov %r15, %rdi
    iretq

ring3_start:
    mov $USER_DS, %eax
    mov %eax, %ds
    mov %eax, %es
    xor %ebp, %ebp
    call probe_main
    ud2

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

exception_common:
    pop %rax
    or $0x100, %eax
    mov $DEBUG_EXIT_PORT, %edx
    out %eax, %dx
3:
    hlt
    jmp 3b

    .section .data, "aw"
    .balign 16
gdt:
    .quad 0                     /* 0x00 null */
    .quad 0x00af9b000000ffff    /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff    /* 0x10 kernel data */
    .quad 0x00cff3000000ffff    /* 0x18 user data */
    .quad 0x00affb000000ffff    /* 0x20 user code, 64-bit */
gdt_tss:
    .quad 0, 0                  /* 0x28 TSS, filled in by _start */
gdt_end:

    .balign 16
    .word 0
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .balign 16
    .word 0
idt_pointer:
    .word 32 * 16 - 1
    .quad idt

    .balign 16
tss:
    .long 0
    .quad kernel_stack_top      /* rsp0 */
    .quad 0, 0                  /* rsp1, rsp2 */
    .quad 0
    .quad 0, 0, 0, 0, 0, 0, 0   /* ist1..ist7 */
    .quad 0
    .word 0
    .word 104                   /* I/O bitmap right after the TSS */
io_bitmap:
    .fill 8192, 1, 0            /* every port allowed */
    .byte 0xff                  /* the terminator the CPU reads past the end */

    /* Identity map of 0..4 GiB in 2 MiB pages, user-accessible. */
    .section .data.pagetables, "aw"
    .balign 4096
pml4:
    .quad pdpt + 0x7
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x7
    .quad pd + 0x1000 + 0x7
    .quad pd + 0x2000 + 0x7
    .quad pd + 0x3000 + 0x7
    .fill 508, 8, 0
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

    .section .bss, "aw", @nobits
    .balign 4096
idt:
    .skip 32 * 16
    .balign 4096
user_stack:
    .skip 64 * 1024
user_stack_top:

    .section .kernel_stack, "aw", @nobits
kernel_stack:
    .skip 4096
kernel_stack_top:               /* 0x200000, fixed by link.ld */
"#,
    options(att_syntax)
);
