"""The trained policy: a GPTModel chunk plus, for algorithms with a critic (PPO), a
tensor-parallel ValueHead on the last pipeline stage reading the final-norm hidden states.

    forward(tokens, position_ids, attention_mask)
        not last stage:          hidden states [s, b, H] (sent on by Megatron's schedule)
        last stage, no head:     logits [b, s, V/tp]
        last stage, value head:  (logits [b, s, V/tp], values [b, s] fp32)

Megatron's DDP, optimizer and schedules see one module, so the head's
parameters are trained, all-reduced and checkpointed with the trunk's.
"""

from __future__ import annotations

from megatron.core.transformer.module import MegatronModule

from autorlhf_nemo.models.heads import ValueHead


class PolicyModel(MegatronModule):
    def __init__(self, gpt, value_head_seed: int | None = None):
        """``value_head_seed``: build a value head (initialised from this seed); None: no head."""
        super().__init__(gpt.config)
        self.gpt = gpt
        self.model_type = gpt.model_type  # read by Megatron's schedules
        self.value_head = None
        if value_head_seed is not None and gpt.post_process:
            # on the trunk's device (Megatron builds CPU-initialised layers on the host)
            self.value_head = ValueHead(gpt.config, seed=value_head_seed).to(next(gpt.parameters()).device)

    def set_input_tensor(self, input_tensor) -> None:
        self.gpt.set_input_tensor(input_tensor)

    # What Megatron's finalize_model_grads reads from the model it unwraps (tied embeddings).
    @property
    def pre_process(self) -> bool:
        return self.gpt.pre_process

    @property
    def post_process(self) -> bool:
        return self.gpt.post_process

    @property
    def share_embeddings_and_output_weights(self) -> bool:
        return self.gpt.share_embeddings_and_output_weights

    def shared_embedding_or_output_weight(self):
        return self.gpt.shared_embedding_or_output_weight()

    def forward(self, tokens, position_ids, attention_mask, decoder_input=None, packed_seq_params=None):
        """``decoder_input`` [s, b, H]: a cached frozen-trunk output (models/reference.FrozenTrunk);
        ``packed_seq_params``: packed rows under Transformer Engine (models/packing.py)."""
        if self.value_head is None:
            return self.gpt(tokens, position_ids, attention_mask, decoder_input=decoder_input,
                            packed_seq_params=packed_seq_params)
        captured = []
        hook = self.gpt.decoder.register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            logits = self.gpt(tokens, position_ids, attention_mask, decoder_input=decoder_input)
        finally:
            hook.remove()
        values = self.value_head(captured[0])[..., 0]          # [s, b]
        return logits, values.transpose(0, 1).contiguous()
