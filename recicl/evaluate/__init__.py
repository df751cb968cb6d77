"""Evaluation: batch scoring with Ray Data, AUC/UAUC/LogLoss per period, the streaming protocol."""
