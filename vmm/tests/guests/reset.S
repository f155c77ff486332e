# Writes to the console, then resets through the i8042 without a status.
	.include "common.inc"
main:
	mov $CONSOLE, %dx
	mov $'r', %al
	out %al, %dx
	mov $0xfe, %al
	out %al, $0x64
1:	jmp 1b
