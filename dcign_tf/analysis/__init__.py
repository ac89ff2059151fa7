"""The evaluation library, by job (no flags, no command line; `dcign_tf.evaluate` is its CLI):

  selection   the run(s) and their data, the test images held, the latent that stands for each factor
  scores      the metrics, from codes and renders
  report      metrics.json, the figures and the TensorBoard events
  evaluation  the whole evaluation of a run: `evaluate(workdir, baseline_workdir, data_dir, settings)`
  training    the cheap summary a training run logs (`training_summary`)
"""
