"""The plugin's own checks, with featrob's conformance helpers (``featrob.testing``)."""

from featrob_example_metric import NoiseFlips

from featrob import PluginHost
from featrob.testing import check_metric, make_context


def test_metric_is_well_formed_and_attacks_flip_at_least_as_much_as_noise():
    result = check_metric(NoiseFlips, make_context(eps=0.1, attacks=["pgd(steps=10)"]))
    s = result.summary
    assert 0 <= s["noise_flip_rate"] <= s["attack_flip_rate"] <= 1


def test_installed_plugin_is_discovered_through_its_entry_point():
    host = PluginHost()
    assert host.plugins["example_metric"].distribution == "featrob-example-metric"
    assert host.metrics.get("noise_flips") is NoiseFlips
