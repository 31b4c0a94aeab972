"""Downstream evaluation: task files -> (context, continuation) requests -> log-likelihoods.

``tasks`` reads the task files, ``scoring`` turns requests into log-likelihoods with a GPT,
``metrics`` turns those into acc / acc_norm / perplexity with standard errors, ``runner`` runs
tasks (sharded across ranks) and ``lm_eval_model`` lets lm-evaluation-harness drive the GPT.
None of it imports Lightning.
"""
