# Says on the console what Linux says when it could unpack the initrd only
# in part, split over two writes as a UART carries it, then resets through
# the i8042 without a status (as Linux's panic does with `panic=-1`).
	.include "common.inc"
main:
	mov $CONSOLE, %dx
	lea unpack_head(%rip), %rdi
	call puts
	lea unpack_tail(%rip), %rdi
	call puts
	mov $0xfe, %al
	out %al, $0x64
1:	jmp 1b
unpack_head:	.asciz "[    1.313465] Initramfs unpac"
unpack_tail:	.asciz "king failed: write error\n[    1.745550] Kernel panic - not syncing\n"
