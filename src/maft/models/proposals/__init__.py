"""Mask2Former-style open-vocabulary proposal generator (§a.1), pure PyTorch."""

from maft.models.proposals.generator import LOGIT_SCALE, MaskProposalGenerator, proposal_scores

__all__ = ["MaskProposalGenerator", "proposal_scores", "LOGIT_SCALE"]
