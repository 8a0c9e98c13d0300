"""Installs glrp from settings.ini (nbdev 2 layout, without pkg_resources).

`pip install glrp` gives the package and its command line (data, training, prediction, CRF, metrics);
`pip install "glrp[repro]"` adds what `glrp reproduce` needs (papermill, a kernel, matplotlib);
`pip install -e ".[dev]"` adds nbdev and the test tools on top of the reproduction;
`pip install -e ".[docs]"` adds what `make docs` needs to build the documentation site.
"""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache-2.0', 'OSI Approved :: Apache Software License')}  # settings.ini's name -> (SPDX, classifier)
lic = licenses[cfg['license']]
# PEP 639: setuptools >= 77 takes an SPDX expression and deprecates (then refuses, next to it) the License classifier
if int(setuptools.__version__.split('.')[0]) >= 77: license_meta, license_classifiers = dict(license_expression=lic[0]), []
else: license_meta, license_classifiers = dict(license=lic[0]), ['License :: ' + lic[1]]
requirements = cfg.get('requirements', '').split()
repro_requirements = cfg.get('repro_requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
docs_requirements = cfg.get('docs_requirements', '').split()
min_python = cfg['min_python']
# settings.ini leaves these empty while the project has no public homepage or contact address: no made-up metadata.
optional = {k: v for k, v in dict(url=cfg.get('git_url', '').strip(), author_email=cfg.get('author_email', '').strip()).items() if v}

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    **license_meta,
    license_files=['LICENSE'],
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Science/Research', *license_classifiers, 'Natural Language :: English',
                 'Topic :: Scientific/Engineering :: Medical Science Apps.',
                 'Programming Language :: Python :: 3.10', 'Programming Language :: Python :: 3.11'],
    author=cfg['author'],
    **optional,
    # glrp.repro: the experiment notebooks of `glrp reproduce` (no Python code), package data found with
    # importlib.resources (glrp.reproduce.notebooks_folder); listed so that setuptools installs the folder as such
    packages=setuptools.find_packages(include=['glrp', 'glrp.*']) + ['glrp.repro'],
    package_data={'glrp.repro': ['*.ipynb']},
    include_package_data=True,
    install_requires=requirements,
    extras_require={'repro': repro_requirements, 'dev': repro_requirements + dev_requirements, 'docs': docs_requirements},
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)
