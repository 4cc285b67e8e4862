"""sbatch templates filled by ``mimkit submit`` (installed as the data package ``mimkit.slurm``)."""
