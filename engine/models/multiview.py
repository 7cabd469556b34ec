"""Joint self-attention over the views of one object, as DiffSplat does, with no new parameters.

The transformer sees B*V images of N tokens each; the processor regroups them into B sequences of V*N
tokens for self-attention only, so every view attends to every other view. Cross-attention to the text
stays per image.
"""

from __future__ import annotations

from diffusers.models.attention_processor import AttnProcessor2_0


class MultiViewAttnProcessor(AttnProcessor2_0):
    def __init__(self, num_views: int):
        super().__init__()
        self.num_views = num_views

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None or self.num_views == 1:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        bv, n, c = hidden_states.shape
        if bv % self.num_views:
            raise ValueError(f"Batch of {bv} images is not a whole number of {self.num_views}-view objects.")
        joint = hidden_states.reshape(bv // self.num_views, self.num_views * n, c)
        out = super().__call__(attn, joint, None, attention_mask, temb, *args, **kwargs)
        return out.reshape(bv, n, c)


def set_multiview_attention(model, num_views: int) -> None:
    """Make every self-attention ("attn1") in ``model`` attend jointly across ``num_views`` views."""
    for name, module in model.named_modules():
        if name.endswith("attn1") and hasattr(module, "set_processor"):
            module.set_processor(MultiViewAttnProcessor(num_views))
