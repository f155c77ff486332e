# Finds the MP table in the last KiB of base memory and prints the APIC ID
# of every processor entry to stdout, then reports status 0.
	.include "common.inc"
main:
	mov $STDOUT, %dx
	mov $0x9fc00, %esi
1:	cmpl $0x5f504d5f, (%rsi)	# "_MP_"
	je 2f
	add $16, %esi
	cmp $0xa0000, %esi
	jb 1b
	jmp 9f
2:	mov 4(%rsi), %esi	# configuration table
	movzwl 34(%rsi), %r9d	# entry count
	lea 44(%rsi), %r10
3:	test %r9d, %r9d
	jz 9f
	cmpb $0, (%r10)
	jne 4f
	movzbl 1(%r10), %eax	# processor entry: APIC ID
	call puthex
	call newline
	add $20, %r10
	sub $1, %r9d
	jmp 3b
4:	add $8, %r10
	sub $1, %r9d
	jmp 3b
9:	jmp report_ok
