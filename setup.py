"""mmpetl: parameter-efficient transfer learning for OpenMMLab detectors."""
import os.path as osp

from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmpetl', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def read_requirements(name):
    with open(osp.join(osp.dirname(__file__), 'requirements', name)) as f:
        return [line.strip() for line in f
                if line.strip() and not line.startswith('#')]


setup(
    name='mmpetl',
    version=read_version(),
    description='Parameter-efficient transfer learning (ETTA, U-Tuning, '
    'UniPT, LoRA, adapters, prefixes) for MMDetection and MMPretrain',
    long_description=open('README.md').read() if osp.exists('README.md')
    else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('tests', 'tests.*', 'configs', 'tools')),
    python_requires='>=3.9',
    # torch/torchvision are not listed: pip must not pick a torch build for
    # the user (see `make install` and the README)
    install_requires=read_requirements('runtime.txt') + ['mmcv>=2.0.0,<2.2.0'],
    extras_require={
        'tests': read_requirements('tests.txt'),
        'demo': read_requirements('demo.txt'),
    },
    license='Apache-2.0',
    zip_safe=False,
)
