"""Governance: signed decisions, approval policies, the audit log and what they allow.

- :mod:`.signing`: a reviewer's approve/reject as a signed in-toto statement (DSSE, Ed25519).
- :mod:`.policy`: the approvers file (who may approve each agent, how many per environment).
- :mod:`.digests`: the model artifacts and evaluation report an approval binds to.
- :mod:`.audit_log`: the keyed, sequenced, anchored audit log, the pipeline's record of truth.
- :mod:`.eligibility`: what a version may do, decided from those records alone.
"""
