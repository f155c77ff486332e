# A hostile network driver: the hostile console driver's rounds (see
# virtio_garbage.inc) against the virtio-net device (the VM's only
# device, so in the first virtio-mmio slot), accepting MTU, MAC,
# MRG_RXBUF and STATUS, whose two queues then carry random rings while
# the test's passt floods the socket. Reports 0 (1 or 2: the window is
# not a virtio-net device).
	.include "common.inc"
	.set WINDOW, 0xd0000000
	.set DEVICE_ID, 1
	.set FEATURES, 0x18028		# MTU 3, MAC 5, MRG_RXBUF 15, STATUS 16
	.set QUEUES, 2
	.include "virtio_garbage.inc"
