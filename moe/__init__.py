"""The federated MoE domain core: pure, synchronous, no broker imports.

Model and parts, local training, evaluation, data and fleet generation, client profiles,
expert load, fitness, assignment, aggregation, and the in-process simulation composing them.
"""
