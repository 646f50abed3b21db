"""Averaging BatchNorm moving statistics across replicas (opt-in).

Keras keeps one set of moving statistics per replica under a
`tf.distribute` strategy (and checkpoints the first replica's). With
`sync_moving_statistics=True` the SAM step defers their update and averages
them across replicas after the optimizer's own all-reduce, as SyncBatchNorm
users expect.
"""

import tensorflow as tf

from keras_sam.backend.state import moving_statistics


def sync_statistics(deferred):
    """Averages the deferred moving statistics across replicas, assigns them.

    Called after the optimizer's gradient all-reduce: collectives must run in
    the same order on every replica.
    """
    if not deferred:
        return
    variables, values = zip(*deferred)
    values = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.MEAN, list(values)
    )
    for variable, value in zip(variables, values):
        variable.assign(value)


def synced_statistics(model, options) -> set:
    """ids of the moving statistics to average across replicas (if asked
    and there are replicas to average over)."""
    context = tf.distribute.get_replica_context()
    if not options.sync_moving_statistics or context is None:
        return set()
    if context.num_replicas_in_sync == 1:
        return set()
    return moving_statistics(model)
