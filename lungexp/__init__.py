"""lungexp: config-driven experiments with 3D CNNs for lung-nodule classification on CT."""

from lungexp.config.store import register_config_nodes
from lungexp.utils.config import register_resolvers

# Any entry point, test or notebook that imports lungexp can compose its configs: they use ${len:...} and
# start the data group from the options declared in lungexp.data.options.
register_resolvers()
register_config_nodes()

__version__ = "0.1.0"
