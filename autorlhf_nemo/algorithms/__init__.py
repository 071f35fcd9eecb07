"""RLHF algorithms on one loop (trainer.py): each a config dataclass (config/schema.py),
a loss (a small pure function, <name>/loss.py) and a model module (<name>/model.py, an
``OnlineModel``, algorithms/base.py).

    ppo          value head, GAE, clipped policy and value losses, fixed/adaptive KL
    online_dpo   chosen/rejected of each prompt's samples, DPO (sigmoid) or IPO loss
    rloo         leave-one-out baseline, KL-penalised sequence reward, clipped sequence ratio
    grpo         group-normalised advantages, per-token clipped ratio, k3 KL in the loss
    ilql         offline: V, Q and target Q heads, expectile/CQL/AWAC losses, Q-guided decoding
    sft          offline: the NLL of the response tokens of a dataset
    dpo          offline: DPO (sigmoid, cDPO, IPO, + NLL) on a preference dataset, the reference's
                 log-probs precomputed or from a frozen reference

The offline ones train on a dataset, one optimizer step per batch of rows (offline.py's
``OfflineModel``, offline_trainer.py's loop).

``model_class(name)`` imports the module lazily: NeMo is heavy to import, and the
config and planner tools never need it.
"""

from __future__ import annotations

import importlib

_MODULES = {"ppo": "autorlhf_nemo.algorithms.ppo.model:PPOModel",
            "online_dpo": "autorlhf_nemo.algorithms.online_dpo.model:OnlineDPOModel",
            "rloo": "autorlhf_nemo.algorithms.rloo.model:RLOOModel",
            "grpo": "autorlhf_nemo.algorithms.grpo.model:GRPOModel",
            "ilql": "autorlhf_nemo.algorithms.ilql.model:ILQLModel",
            "sft": "autorlhf_nemo.algorithms.sft.model:SFTModel",
            "dpo": "autorlhf_nemo.algorithms.dpo.model:DPOModel"}


def model_class(name: str):
    """The OnlineModel subclass of ``algorithm=<name>``."""
    if name not in _MODULES:
        raise ValueError(f"algorithm {name!r} is unknown: use one of {sorted(_MODULES)}")
    module, attr = _MODULES[name].split(":")
    return getattr(importlib.import_module(module), attr)
