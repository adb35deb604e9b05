"""LightningModules: ProposalTask (stage 1) and MaftTask (stage 2 + frozen-CLIP baselines)."""

from maft.tasks.maft_task import MaftTask
from maft.tasks.proposal_task import ProposalTask

__all__ = ["MaftTask", "ProposalTask"]
