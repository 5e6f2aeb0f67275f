"""The U-Net's architecture choices that settings, plans and widgets offer, without importing
PyTorch (:mod:`.model` builds the network from them)."""

#: decoder upsampling modes; ``"unpool"`` is bed-of-nails (max-unpooling with the encoder's indices)
UPSAMPLING = ("nearest", "bilinear", "transposed", "unpool")
