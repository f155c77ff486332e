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
	.set DEVICE_ID, 3
	.set FEATURES, 2			# MULTIPORT
	.set QUEUES, 8
	.include "virtio_garbage.inc"
