# Copies bytes received on ttyS1 back to ttyS1 until a '.' arrives, then
# reports status 0 (stdin forwarding). Like guest-init, it first says
# `@init` on the status port: the VMM forwards stdin only from then on.
	.include "common.inc"
main:
	mov $STATUS, %dx
	mov $'@', %al
	out %al, %dx
	mov $'i', %al
	out %al, %dx
	mov $'n', %al
	out %al, %dx
	mov $'i', %al
	out %al, %dx
	mov $'t', %al
	out %al, %dx
	mov $'\n', %al
	out %al, %dx
	mov $STDOUT + 5, %dx	# line status register
1:	in %dx, %al
	test $1, %al		# data ready
	jz 1b
	mov $STDOUT, %dx
	in %dx, %al
	out %al, %dx
	cmp $'.', %al
	je 2f
	mov $STDOUT + 5, %dx
	jmp 1b
2:	jmp report_ok
