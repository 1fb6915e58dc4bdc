import pytest

# markers transformers' own conftest registers (the sdist does not ship it); its tests carry them
_UPSTREAM_MARKERS = (
    "accelerate_tests",
    "flash_attn_test",
    "flash_attn_3_test",
    "flash_attn_4_test",
    "torch_compile_test",
    "torch_export_test",
    "generate",
    "is_training_test",
    "is_tensor_parallel_test",
    "is_staging_test",
    "is_pipeline_test",
    "not_device_test",
    "bitsandbytes",
)


def pytest_configure(config):
    for name in _UPSTREAM_MARKERS:
        config.addinivalue_line("markers", f"{name}: a marker of transformers' own tests")


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(one_thread):
    yield
