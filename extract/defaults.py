"""Defaults of stage 1, shared by the Python API, the CLI and the encoder (no heavy imports)."""

DEFAULT_MODEL = "openai/clip-vit-base-patch32"  # HuggingFace id of the CLIP used by R²-Tuning
DEFAULT_K = 4  # CLIP layers kept: the last K transformer blocks
DEFAULT_FPS = 0.5  # clips per second (2-second clips: QVHighlights, TACoS, Ego4D, TVSum)
DEFAULT_FRAME_AT = "middle"  # frame of each clip: "middle" (the original's ffmpeg) or "start"
FRAME_AT_CHOICES = ("middle", "start")
DTYPE_CHOICES = ("fp32", "fp16", "bf16")
CACHE_DIR = "cache"  # default output folder: cache/<name>.h5 relative to the working directory
QUERY_CHUNK = 256  # queries per cache commit
CPU_BATCH_FRAMES = 32  # frames per forward pass on CPU
GPU_BATCH_FRAMES = 256  # frames per forward pass on CUDA
