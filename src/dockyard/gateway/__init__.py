"""The data plane: the sync proxy's dispatch, async jobs, worker webhooks and the autoscaler."""
