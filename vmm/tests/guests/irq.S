# Takes ttyS0's THRE interrupt (ISA IRQ 4, I/O APIC pin 4) through the I/O
# APIC and the local APIC, as Linux's 8250 driver does, using only the
# architectural interfaces (82093AA registers, xAPIC MMIO, 16550 IER/IIR/THR)
# so that any irqchip model must pass. The command line's last word picks the
# pin's mode: `edge`, `level` or `masked`, or `stream`: 64 KiB sent the way
# Linux's 8250 driver sends a program's output (a transmit loop in the
# handler, stop and start of THRI as its buffer empties and fills), which
# must never stall. Results go to stdout as lines, then status 0; anything
# wrong prints a line and status 1.
	.include "common.inc"
.set IOAPIC, 0xfec00000		# IOREGSEL at +0, IOWIN at +0x10 (in %r13)
.set LAPIC, 0xfee00000		# (in %r12)
.set VECTOR, 0x34
.set RTE, 0x10 + 2 * 4		# pin 4's redirection entry, low word
.set LEVEL, 1 << 15
.set MASKED, 1 << 16
.set WAIT, 0x7fffffff		# TSC ticks to wait for an interrupt (~1 s)
.set QUIET, 0x4000000		# TSC ticks in which none may come (~25 ms)
.set MASKED_WAIT, 0x10000000	# ~100 ms: in-kernel irqfd injection is
				# deferred to a workqueue (up to 4 ms seen)

main:	# Map 3-4 GiB (both APICs) with uncached 2 MiB pages: PDPT entry 3.
	lea pd3(%rip), %rdi
	lea 3(%rdi), %rax
	mov %rax, 0xa000 + 3 * 8
	mov $(IOAPIC | 0x9b), %eax	# present, writable, PWT, PCD, 2 MiB
	mov %rax, 0x1f6 * 8(%rdi)
	mov $(LAPIC | 0x9b), %eax
	mov %rax, 0x1f7 * 8(%rdi)
	mov %cr3, %rax
	mov %rax, %cr3
	mov $IOAPIC, %r13d
	mov $LAPIC, %r12d
	mov $0xff, %al		# mask both 8259s, as Linux does with an I/O APIC
	out %al, $0x21
	out %al, $0xa1

	# IDT: each vector to its stub (which reports it), VECTOR to `irq`.
	lea idt(%rip), %rdi
	lea stubs(%rip), %eax
1:	call set_gate
	add $16, %rdi
	add $16, %eax
	lea idt_end(%rip), %rsi
	cmp %rsi, %rdi
	jne 1b
	lea idt + VECTOR * 16(%rip), %rdi
	lea irq(%rip), %eax
	call set_gate
	lea idt + 0xff * 16(%rip), %rdi
	lea spurious(%rip), %eax
	call set_gate
	lidt idtr(%rip)

	# Local APIC: software-enabled (SVR, spurious vector 0xff), TPR 0,
	# LINT0 (the 8259's ExtINT) masked.
	movl $0x1ff, 0xf0(%r12)
	movl $0, 0x80(%r12)
	movl $0x10700, 0x350(%r12)

	# I/O APIC version register; the max redirection entry must be >= 23.
	mov $STDOUT, %dx
	lea s_version(%rip), %rdi
	call puts
	movl $1, (%r13)
	mov 0x10(%r13), %eax
	mov %eax, %r14d
	call puthex
	call newline
	shr $16, %r14d
	cmp $23, %r14b
	lea s_pins(%rip), %rdi
	jb fail

	mov $CONSOLE + 4, %dx	# MCR: DTR, RTS, OUT2 (gates the IRQ on a PC)
	mov $0x0b, %al
	out %al, %dx

	mov 0x228(%r15), %edi	# the mode: the command line's last word
	mov %rdi, %rsi
2:	movb (%rdi), %al
	add $1, %rdi
	cmp $' ', %al
	jne 3f
	mov %rdi, %rsi
3:	test %al, %al
	jnz 2b
	cmpb $'e', (%rsi)	# edge, level or masked: the first letter says
	je edge
	cmpb $'l', (%rsi)
	je level
	cmpb $'m', (%rsi)
	je masked
	cmpb $'s', (%rsi)
	je stream
	lea s_mode(%rip), %rdi
	jmp fail

# Edge: enabling THRI raises THRE at once (the holding register is empty);
# a byte written after the handler has read IIR raises it again.
edge:
	mov $VECTOR, %eax
	call set_pin
	call enable_thri
	mov $1, %ecx
	call expect
	call send
	mov $2, %ecx
	call expect
	jmp done

# Level: with interrupts off the interrupt waits in the local APIC's IRR and
# the I/O APIC holds remote IRR; the handler's EOI clears it, and a second
# interrupt gets through. (Remote IRR is read before delivery, not in the
# handler, because kvm_pvm EOIs an interrupt as it delivers it.)
level:
	mov $(VECTOR | LEVEL), %eax
	call set_pin
	call enable_thri
	call now
	lea WAIT(%rax), %r8
1:	testl $1 << (VECTOR - 32), 0x210(%r12)	# IRR bits 32-63
	jnz 2f
	call now
	cmp %r8, %rax
	jb 1b
2:	lea s_irr_before(%rip), %rdi
	call put_irr
	mov $1, %ecx
	call expect
	lea s_irr_after(%rip), %rdi
	call put_irr
	call send
	mov $2, %ecx
	call expect
	jmp done

# Masked: THRE raised while the pin is masked is not delivered (the UART
# still shows it in IIR); after unmasking, the next one is.
masked:
	mov $(VECTOR | MASKED), %eax
	call set_pin
	call enable_thri
	mov $1, %ecx
	mov $MASKED_WAIT, %r9d
	call wait
	lea s_masked_count(%rip), %rdi
	call put_count
	cmpl $0, count(%rip)
	lea s_extra(%rip), %rdi
	jne fail
	mov $STDOUT, %dx
	lea s_iir(%rip), %rdi
	call puts
	mov $CONSOLE + 2, %dx
	in %dx, %al		# reading IIR acknowledges THRE
	movzbl %al, %eax
	mov $STDOUT, %dx
	call puthex
	call newline
	mov $VECTOR, %eax
	call set_pin
	call send
	mov $1, %ecx
	call expect

# No more interrupts may come; then report success.
done:
	mov count(%rip), %ecx
	add $1, %ecx
	mov $QUIET, %r9d
	call wait
	lea s_total(%rip), %rdi
	call put_count
	cmp %ecx, count(%rip)
	lea s_extra(%rip), %rdi
	jae fail
	jmp report_ok

# Stream: the main loop is the tty layer, putting 256 bytes at a time into
# a 4 KiB buffer and starting the transmitter (THRI on) with interrupts
# off; the handler is serial8250_interrupt: it reads IIR until no interrupt
# is pending, and on THRE writes up to 16 bytes, or turns THRI off when the
# buffer is empty. If nothing is sent for about a second, an interrupt was
# lost: the UART holds THRE pending and waits to be read.
.set STREAM_TOTAL, 65536
stream:
	lea idt + VECTOR * 16(%rip), %rdi
	lea irq_stream(%rip), %eax
	call set_gate
	mov $VECTOR, %eax
	call set_pin
	call now
	mov %rax, %r10			# when `sent` last moved
	xor %r11d, %r11d		# `sent` as last seen
1:	cli
	cmpl $STREAM_TOTAL, queued(%rip)
	jae 2f
	cmpl $4096 - 256, pending(%rip)
	ja 2f
	addl $256, pending(%rip)
	addl $256, queued(%rip)
	testb $2, ier(%rip)		# start_tx: THRI on unless it is
	jnz 2f
	orb $2, ier(%rip)
	mov $CONSOLE + 1, %dx
	movb ier(%rip), %al
	out %al, %dx
2:	sti
	cmpl $STREAM_TOTAL, sent(%rip)
	jae 4f
	mov sent(%rip), %eax
	cmp %eax, %r11d
	je 3f
	mov %eax, %r11d
	call now
	mov %rax, %r10
	jmp 1b
3:	call now
	sub %r10, %rax
	cmp $WAIT, %rax
	jb 1b
	cli
	mov $STDOUT, %dx
	lea s_stalled(%rip), %rdi
	call puts
	mov sent(%rip), %eax
	call puthex
	lea s_empty(%rip), %rdi
	jmp fail
4:	cli
	mov $STDOUT, %dx
	lea s_streamed(%rip), %rdi
	call puts
	mov sent(%rip), %eax
	call puthex
	call newline
	jmp report_ok

irq_stream:
	push %rax
	push %rcx
	push %rdx
1:	mov $CONSOLE + 2, %dx
	in %dx, %al
	test $1, %al			# no interrupt pending: done
	jnz 4f
	testb $2, ier(%rip)
	jz 1b
	mov $16, %ecx
2:	cmpl $0, pending(%rip)
	je 3f
	mov $CONSOLE, %dx
	mov $'x', %al
	out %al, %dx
	subl $1, pending(%rip)
	addl $1, sent(%rip)
	sub $1, %ecx
	jnz 2b
	jmp 1b
3:	andb $~2, ier(%rip)		# stop_tx
	mov $CONSOLE + 1, %dx
	movb ier(%rip), %al
	out %al, %dx
	jmp 1b
4:	movl $0, 0xb0(%r12)
	pop %rdx
	pop %rcx
	pop %rax
	iretq

# fail: the string at %rdi and a newline on stdout, then status 1.
fail:
	mov $STDOUT, %dx
	call puts
	call newline
	mov $'1', %al
	jmp report

# expect: wait (up to WAIT) until `count` is %ecx; print "irq 34 count N".
expect:
	mov $WAIT, %r9d
	call wait
	cmp %ecx, count(%rip)
	lea s_none(%rip), %rdi
	jb fail
	lea s_irq(%rip), %rdi
	jmp put_count

# wait: interrupts on until `count` reaches %ecx or %r9 TSC ticks pass.
wait:
	call now
	lea (%rax, %r9), %r8
	sti
1:	cmp %ecx, count(%rip)
	jae 2f
	call now
	cmp %r8, %rax
	jb 1b
2:	cli
	ret

# now: the TSC in %rax (clobbers %rdx).
now:
	rdtsc
	shl $32, %rdx
	or %rdx, %rax
	ret

# set_pin: pin 4's redirection entry: low word %eax, destination APIC 0.
set_pin:
	movl $RTE + 1, (%r13)
	movl $0, 0x10(%r13)
	movl $RTE, (%r13)
	mov %eax, 0x10(%r13)
	ret

# enable_thri: IER = THRI; send: a byte to THR. Both can raise THRE.
enable_thri:
	mov $CONSOLE + 1, %dx
	mov $2, %al
	out %al, %dx
	ret
send:
	mov $CONSOLE, %dx
	mov $'x', %al
	out %al, %dx
	ret

# put_count: the string at %rdi, `count` (0-9) and a newline, on stdout.
put_count:
	mov $STDOUT, %dx
	call puts
	mov count(%rip), %eax
	add $'0', %al
	out %al, %dx
	jmp newline

# put_irr: the string at %rdi, then pin 4's remote IRR bit, on stdout.
put_irr:
	mov $STDOUT, %dx
	call puts
	movl $RTE, (%r13)
	mov 0x10(%r13), %eax
	shr $14, %eax
	and $1, %al
	add $'0', %al
	out %al, %dx
	jmp newline

# set_gate: 64-bit interrupt gate at %rdi to the handler at %eax (< 4 GiB).
set_gate:
	mov %ax, (%rdi)
	movw $8, 2(%rdi)		# the boot GDT's code segment
	movw $0x8e00, 4(%rdi)		# present, DPL 0, interrupt gate
	mov %eax, %ebx
	shr $16, %ebx
	mov %bx, 6(%rdi)
	movq $0, 8(%rdi)
	ret

# The interrupt: read IIR (acknowledges THRE at the UART), EOI, count.
irq:
	push %rax
	push %rdx
	mov $CONSOLE + 2, %dx
	in %dx, %al
	movl $0, 0xb0(%r12)
	addl $1, count(%rip)
	pop %rdx
	pop %rax
	iretq
spurious:			# the local APIC's spurious vector: no EOI
	iretq

# Any other vector (exceptions included): say which, and fail.
unexpected:
	movzbl %al, %r14d
	mov $STDOUT, %dx
	lea s_unexpected(%rip), %rdi
	call puts
	mov %r14d, %eax
	call puthex
	lea s_empty(%rip), %rdi
	jmp fail
	.balign 16
stubs:	.set v, 0
	.rept 256
	.balign 16
	mov $v, %al
	jmp unexpected
	.set v, v + 1
	.endr

idtr:	.word 256 * 16 - 1
	.quad idt
count:	.long 0
pending:	.long 0
queued:	.long 0
sent:	.long 0
ier:	.byte 0
s_version:	.asciz "ioapic version "
s_pins:	.asciz "fewer than 24 I/O APIC pins"
s_mode:	.asciz "the mode must be edge, level, masked or stream"
s_irq:	.asciz "irq 34 count "
s_none:	.asciz "no interrupt came"
s_total:	.asciz "total "
s_extra:	.asciz "an interrupt that was not caused came"
s_irr_before:	.asciz "remote irr before eoi "
s_irr_after:	.asciz "remote irr after eoi "
s_masked_count:	.asciz "while masked: count "
s_iir:	.asciz "iir "
s_unexpected:	.asciz "unexpected vector "
s_stalled:	.asciz "stalled: no interrupt for a second after bytes sent: "
s_streamed:	.asciz "streamed "
s_empty:	.asciz ""
	.balign 4096
idt:	.skip 256 * 16
idt_end:
pd3:	.skip 4096
