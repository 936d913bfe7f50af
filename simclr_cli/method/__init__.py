"""The method of the paper: encoder and projection head, NT-Xent, the two view pipelines
and their image operations, fixed preprocessing, LARS and the learning-rate schedule.

Plain arguments in, tensors out: nothing here reads the command line.
"""
