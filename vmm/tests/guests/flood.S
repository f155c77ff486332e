# A hostile guest: writes to ttyS1 (stdout), ttyS0 (console) and `@` lines
# to ttyS2 (events) as fast as it can, forever, never reporting a status.
	.include "common.inc"
main:
1:	mov $STDOUT, %dx
	mov $'o', %al
	out %al, %dx
	mov $CONSOLE, %dx
	mov $'e', %al
	out %al, %dx
	mov $STATUS, %dx
	mov $'@', %al
	out %al, %dx
	call newline
	jmp 1b
