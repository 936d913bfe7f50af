"""Pretraining: the phases, the loop, resume, the run log, the kNN monitor and the memory
estimate.
"""
