# A hostile virtio driver: maps the virtio-mmio window (0xd0000000), fills
# a megabyte of guest memory with random bytes (descriptor tables, rings
# and buffers all come from there), then, 4096 times over, brings the
# console up the way a driver would but with random queue sizes and
# addresses (inside and outside memory), kicks random queues, and writes
# random values to random registers and configuration bytes. Then it
# reports status 0 (1 or 2: the window is not a virtio console): the VMM
# must still be answering.
	.include "common.inc"
	.set WINDOW, 0xd0000000
	.set PD, 0x200000		# a page directory for [3 GiB, 4 GiB)
	.set GARBAGE, 0x300000		# 1 MiB of random bytes
main:
	mov $PD, %rdi
	mov $0xc0000083, %rax		# 2 MiB pages: present, writable, large
	mov $512, %ecx
1:	mov %rax, (%rdi)
	add $0x200000, %rax
	add $8, %rdi
	sub $1, %ecx
	jnz 1b
	movq $(PD | 3), 0xa000 + 3 * 8	# the boot PDPT's entry for the 4th GiB
	mov %cr3, %rax
	mov %rax, %cr3

	mov $0x9e3779b97f4a7c15, %r12	# xorshift64 state
	mov $GARBAGE, %rdi
	mov $(0x100000 / 8), %ecx
2:	call random
	mov %rax, (%rdi)
	add $8, %rdi
	sub $1, %ecx
	jnz 2b

	mov $WINDOW, %rbx
	cmpl $0x74726976, (%rbx)	# MagicValue "virt": the console is there
	mov $'1', %al
	jne report
	cmpl $3, 8(%rbx)		# DeviceID: a console
	mov $'2', %al
	jne report
	mov $4096, %r13d
round:
	movl $0, 0x70(%rbx)		# reset
	movl $3, 0x70(%rbx)		# ACKNOWLEDGE | DRIVER
	movl $1, 0x24(%rbx)		# DriverFeaturesSel 1: VERSION_1
	movl $1, 0x20(%rbx)
	movl $0, 0x24(%rbx)
	movl $2, 0x20(%rbx)		# MULTIPORT
	movl $11, 0x70(%rbx)		# | FEATURES_OK
	xor %r14d, %r14d
queue:
	mov %r14d, 0x30(%rbx)		# QueueSel
	call random
	and $0x7f, %eax
	mov %eax, 0x38(%rbx)		# QueueNum: 0..127, often not a power of two
	call random_address
	mov %eax, 0x80(%rbx)		# QueueDescLow
	call random_address
	mov %eax, 0x90(%rbx)		# QueueDriverLow
	call random_address
	mov %eax, 0xa0(%rbx)		# QueueDeviceLow
	movl $1, 0x44(%rbx)		# QueueReady
	add $1, %r14d
	cmp $8, %r14d
	jb queue
	movl $15, 0x70(%rbx)		# | DRIVER_OK
	mov $8, %r14d
kicks:
	call random
	and $0xf, %eax
	mov %eax, 0x50(%rbx)		# QueueNotify, queues 0..15
	call random			# a random 32-bit register or config byte
	mov %eax, %ecx
	and $0x1fc, %ecx
	shr $16, %eax
	cmp $0x100, %ecx
	jae 3f
	cmp $0x70, %ecx		# never a reset in the middle (that is the loop's)
	je 4f
	mov %eax, (%rbx, %rcx)
	jmp 4f
3:	mov %al, (%rbx, %rcx)
4:	sub $1, %r14d
	jnz kicks
	sub $1, %r13d
	jnz round
	jmp report_ok

# random: the next xorshift64 value in %rax (state in %r12).
random:
	mov %r12, %rax
	shl $13, %rax
	xor %rax, %r12
	mov %r12, %rax
	shr $7, %rax
	xor %rax, %r12
	mov %r12, %rax
	shl $17, %rax
	xor %rax, %r12
	mov %r12, %rax
	ret

# random_address: mostly inside the garbage megabyte (16-byte aligned, so
# that the rings are accepted), sometimes anywhere in the 32-bit space.
random_address:
	call random
	test $0x700, %eax
	jz 1f
	and $0xffff0, %eax
	add $GARBAGE, %eax
1:	ret
