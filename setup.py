"""Installs glrp from settings.ini (nbdev 2 layout, without pkg_resources)."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[cfg['license']]
requirements = cfg.get('requirements', '').split()
dev_requirements = cfg.get('dev_requirements', '').split()
min_python = cfg['min_python']

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    license=lic[0],
    classifiers=['Development Status :: 3 - Alpha', 'Intended Audience :: Science/Research',
                 'License :: ' + lic[1], 'Natural Language :: English',
                 'Topic :: Scientific/Engineering :: Medical Science Apps.',
                 'Programming Language :: Python :: 3.10', 'Programming Language :: Python :: 3.11'],
    url=cfg['git_url'],
    author=cfg['author'], author_email=cfg['author_email'],
    packages=setuptools.find_packages(include=['glrp', 'glrp.*']),
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    # the experiment notebooks of `glrp reproduce`, for installs that are not a checkout (found in sys.prefix/share/glrp/repro)
    data_files=[('share/glrp/repro', [f'nbs/repro/{n}.ipynb' for n in ('main_table', 'ablation', 'figures')])],
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)
