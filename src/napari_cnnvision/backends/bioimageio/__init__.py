"""bioimage.io model packages: read and check them (:mod:`.package`, no framework import) and
run them (:mod:`.predict`, in the torch worker; ONNX weights through onnxruntime)."""
