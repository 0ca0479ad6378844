"""How many decode tasks run at once (decode_stage.decode_concurrency)."""

from conclugen.features.decode_stage import decode_concurrency


def test_the_configured_count_wins() -> None:
    assert decode_concurrency(3, cluster_cpus=8, local_single_node=True, machine_cores=2) == 3
    assert decode_concurrency(5, cluster_cpus=64, local_single_node=False, machine_cores=16) == 5


def test_an_over_declared_local_cluster_gets_one_task_per_core() -> None:
    # start_local_ray declares at least 8 CPUs, also on a 2-core laptop
    assert decode_concurrency(0, cluster_cpus=8, local_single_node=True, machine_cores=2) == 2


def test_real_clusters_keep_rays_own_limit() -> None:
    assert decode_concurrency(0, cluster_cpus=16, local_single_node=True, machine_cores=16) is None  # CPUs = cores
    assert decode_concurrency(0, cluster_cpus=48, local_single_node=False, machine_cores=16) is None  # several nodes, or a remote one
    assert decode_concurrency(0, cluster_cpus=8, local_single_node=True, machine_cores=None) is None  # cores unknown
