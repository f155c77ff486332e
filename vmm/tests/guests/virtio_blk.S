# A virtio-blk driver against the VM's only device, a read-only disk of 64
# sectors in the first virtio-mmio slot. After the handshake (else 3) and
# a look at the capacity (else 4), it reads sector 2, where the host put a
# line, and writes that line on stdout (a status other than OK: 5); asks
# for the serial and writes it on stdout (6); tries to write sector 0 and
# to read sector 64, past the end, which must both fail with IOERR (7,
# 8). A request the device did not use at once is 9. Reports 0 when done
# (1 or 2: no virtio-blk in the window).
	.include "common.inc"
	.set WINDOW, 0xd0000000
	.set DEVICE_ID, 2
	.set FEATURES, 0x20		# VIRTIO_BLK_F_RO
	.include "virtio_driver.inc"
	.set RING, 0x400000		# table, driver area +0x400, device area +0x800
	.set SIZE, 8
	.set HEADER, 0x410000
	.set DATA, 0x411000
	.set STATUS_BYTE, 0x412000
main:
	call map_windows
	call find_device
	call negotiate
	movl $0, 0x30(%rbx)		# QueueSel 0
	movl $SIZE, 0x38(%rbx)		# QueueNum
	movl $RING, 0x80(%rbx)		# QueueDescLow
	movl $(RING + 0x400), 0x90(%rbx)	# QueueDriverLow
	movl $(RING + 0x800), 0xa0(%rbx)	# QueueDeviceLow
	movl $1, 0x44(%rbx)		# QueueReady
	movl $15, 0x70(%rbx)		# | DRIVER_OK
	cmpl $15, 0x70(%rbx)
	mov $'3', %al
	jne report
	cmpl $64, 0x100(%rbx)		# capacity, low half
	mov $'4', %al
	jne report

	mov $0, %eax			# IN
	mov $2, %ecx			# sector 2
	mov $512, %edx
	mov $2, %r8d			# the data is device-writable
	call request
	cmp $0, %al
	mov $'5', %al
	jne report
	mov $STDOUT, %dx
	mov $DATA, %edi
	call puts

	movb $0, DATA + 20
	mov $8, %eax			# GET_ID
	mov $0, %ecx
	mov $20, %edx
	mov $2, %r8d
	call request
	cmp $0, %al
	mov $'6', %al
	jne report
	mov $STDOUT, %dx
	mov $DATA, %edi
	call puts

	mov $1, %eax			# OUT
	mov $0, %ecx
	mov $512, %edx
	mov $0, %r8d			# the data is device-readable
	call request
	cmp $1, %al			# IOERR
	mov $'7', %al
	jne report

	mov $0, %eax			# IN
	mov $64, %ecx			# the first sector past the end
	mov $512, %edx
	mov $2, %r8d
	call request
	cmp $1, %al
	mov $'8', %al
	jne report
	jmp report_ok

# request: one request of type %eax for sector %ecx with %edx bytes of
# data at DATA (device-writable when %r8d is 2) in descriptors 0-2; the
# device serves it during the QueueNotify exit, so its status is in %al
# on return (or the guest reports 9).
request:
	mov %eax, HEADER
	movl $0, HEADER + 4
	mov %ecx, HEADER + 8
	movl $0, HEADER + 12
	movb $0xff, STATUS_BYTE
	movq $HEADER, RING		# descriptor 0: the header
	movl $16, RING + 8
	movw $1, RING + 12		# NEXT
	movw $1, RING + 14
	movq $DATA, RING + 16		# descriptor 1: the data
	mov %edx, RING + 24
	or $1, %r8d			# NEXT
	mov %r8w, RING + 28
	movw $2, RING + 30
	movq $STATUS_BYTE, RING + 32	# descriptor 2: the status
	movl $1, RING + 40
	movw $2, RING + 44		# WRITE
	movw $0, RING + 46
	movzwl RING + 0x402, %eax	# avail idx
	mov %eax, %edi
	and $(SIZE - 1), %edi
	lea RING + 0x404(,%rdi,2), %rsi
	movw $0, (%rsi)			# head 0
	add $1, %eax
	mov %ax, RING + 0x402
	movl $0, 0x50(%rbx)		# QueueNotify 0
	cmpw %ax, RING + 0x802		# used idx
	mov $'9', %al
	jne report
	movb STATUS_BYTE, %al
	ret
