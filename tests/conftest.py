import os
import warnings

# Megatron warns at import that apex / Transformer Engine are absent (CPU machine).
warnings.filterwarnings("ignore", message=".*(Apex|Transformer Engine).*")
os.environ.setdefault("OMP_NUM_THREADS", "2")
