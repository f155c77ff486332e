# A virtio driver that breaks two queue rules, against the console (the
# VM's only device, in the first virtio-mmio slot):
# - a control queue whose driver area is left at 0, the register's value
#   until it is written: DRIVER_OK must be answered with
#   DEVICE_NEEDS_RESET (else status 3) and a configuration interrupt
#   (else 4);
# - once the queues are set up properly (else 5), port 0's transmit queue
#   gets a chain whose descriptor refers to an indirect table, never
#   offered, that holds "indirect", then a plain chain holding "direct":
#   both must come back (else 6), and only "direct" reach stdout (the
#   host checks).
# Reports 0 when done (1 or 2: no console in the window).
	.include "common.inc"
	.set WINDOW, 0xd0000000
	.set DEVICE_ID, 3
	.set FEATURES, 2			# MULTIPORT
	.include "virtio_driver.inc"
	.set RINGS, 0x400000		# queue q: table, driver and device area
					# in the page at RINGS + q * 0x1000
	.set SIZE, 8			# entries of each queue
	.set TX0, RINGS + 0x1000	# port 0's transmit queue (1)
main:
	call map_windows
	call find_device

	call negotiate
	mov $2, %edi
	call setup_queue
	movl $0, 0x90(%rbx)		# queue 2's QueueDriverLow back to 0
	mov $3, %edi
	call setup_queue
	movl $15, 0x70(%rbx)		# | DRIVER_OK
	testl $0x40, 0x70(%rbx)		# DEVICE_NEEDS_RESET
	mov $'3', %al
	jz report
	testl $2, 0x60(%rbx)		# InterruptStatus: configuration change
	mov $'4', %al
	jz report

	call negotiate
	mov $1, %edi
	call setup_queue
	mov $2, %edi
	call setup_queue
	mov $3, %edi
	call setup_queue
	movl $15, 0x70(%rbx)
	cmpl $15, 0x70(%rbx)
	mov $'5', %al
	jne report

	movq $indirect_table, TX0	# descriptor 0: the indirect table
	movl $16, TX0 + 8
	movw $4, TX0 + 12		# VIRTQ_DESC_F_INDIRECT
	movq $direct, TX0 + 16		# descriptor 1: plain
	movl $7, TX0 + 24
	movw $1, TX0 + 0x400 + 6	# avail ring: heads 0, then 1
	movw $1, TX0 + 0x400 + 2	# avail idx
	movl $1, 0x50(%rbx)		# QueueNotify
	movw $2, TX0 + 0x400 + 2
	movl $1, 0x50(%rbx)
	cmpw $2, TX0 + 0x800 + 2	# used idx: both came back
	mov $'6', %al
	jne report
	jmp report_ok

# setup_queue: queue %edi gets SIZE entries and its page from RINGS, and
# is made ready.
setup_queue:
	mov %edi, 0x30(%rbx)		# QueueSel
	movl $SIZE, 0x38(%rbx)		# QueueNum
	mov %edi, %eax
	shl $12, %eax
	add $RINGS, %eax
	mov %eax, 0x80(%rbx)		# QueueDescLow
	add $0x400, %eax
	mov %eax, 0x90(%rbx)		# QueueDriverLow
	add $0x400, %eax
	mov %eax, 0xa0(%rbx)		# QueueDeviceLow
	movl $1, 0x44(%rbx)		# QueueReady
	ret

	.balign 16
indirect_table:				# one descriptor
	.quad indirect
	.long 9
	.word 0, 0
direct:		.ascii "direct\n"
indirect:	.ascii "indirect\n"
