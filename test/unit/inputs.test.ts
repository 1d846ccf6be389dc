import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { describe, test } from 'node:test';
import { Inputs } from '../../src/contract.js';
import { InputError, defaultCacheDir, parseConfig, type HostFacts } from '../../src/inputs.js';

const host: HostFacts = { arch: 'arm64', env: {}, homedir: '/home/runner' };
const parse = (inputs: Record<string, string>, h: HostFacts = host) => parseConfig((n) => inputs[n], h);

/** Bad inputs and the fragment their one-line error must contain. */
export const BAD_INPUTS: [Record<string, string>, RegExp][] = [
  [{ distro: 'ubuntu-99' }, /^unknown distro: ubuntu-99 \(available: debian-13, fedora-43, ubuntu-24\.04\)$/],
  [{ distro: 'ubuntu' }, /^unknown distro: ubuntu \(available: .*ubuntu-24\.04\)$/],
  [{ 'base-packages': 'no' }, /invalid base-packages: "no" \(allowed: true, false\)/],
  [{ 'cache-save': '${{ github.ref }}' }, /invalid cache-save: "\$\{\{ github\.ref \}\}" \(allowed: true, false\)/],
  [{ arch: 'riscv64' }, /invalid arch: "riscv64" \(allowed: auto, arm64, amd64\)/],
  [{ memory: 'abc' }, /invalid memory: "abc" \(a whole number of MiB from 512/],
  [{ memory: '-1' }, /invalid memory: "-1"/],
  [{ memory: '100' }, /invalid memory: "100" \(a whole number of MiB from 512/],
  [{ memory: '2048MB' }, /invalid memory: "2048MB"/],
  [{ memory: '2048.5' }, /invalid memory: "2048.5"/],
  [{ cpus: '0' }, /invalid cpus: "0" \(a whole number from 1 to 256\)/],
  [{ cpus: 'two' }, /invalid cpus: "two"/],
  [{ browser: 'yes' }, /invalid browser: "yes" \(allowed: true, false\)/],
  [{ snapshot: '1' }, /invalid snapshot: "1" \(allowed: true, false\)/],
  [{ cache: 'on' }, /invalid cache: "on"/],
  [{ redownload: 'y' }, /invalid redownload: "y"/],
  [{ 'install-deps': 'nope' }, /invalid install-deps: "nope"/],
  [{ kvm: 'maybe' }, /invalid kvm: "maybe" \(allowed: auto, true, false\)/],
  [{ 'kvm-fix-permissions': 'yes' }, /invalid kvm-fix-permissions: "yes" \(allowed: auto, true, false\)/],
  [{ 'image-url': '/x.qcow2', 'image-checksum': 'abcdef' }, /invalid image-checksum: "abcdef" \(expected sha512:HEX or sha256:HEX\)/],
  [{ 'image-url': '/x.qcow2', 'image-checksum': 'sha256:abc' }, /sha256 digest has 64 hex digits, got 3/],
  [{ 'image-url': '/x.qcow2', 'image-checksum': `sha512:${'a'.repeat(64)}` }, /sha512 digest has 128 hex digits, got 64/],
  [{ 'image-url': '/x.qcow2', 'image-checksum': `md5:${'a'.repeat(32)}` }, /invalid image-checksum/],
  [{ 'image-url': 'ftp://mirror/x.qcow2', 'image-checksum': `sha256:${'a'.repeat(64)}` }, /invalid image-url: "ftp:\/\/mirror\/x.qcow2" \(allowed: http:\/\/, https:\/\/, file:\/\/ or a path\)/],
  [{ 'image-url': 'https://mirror/x.qcow2' }, /missing image-checksum for image-url/],
  [{ packages: 'jq; rm -rf /' }, /invalid packages: "jq;"/],
  [{ arch: 'amd64', kvm: 'true' }, /invalid kvm: "true" with arch amd64 on a arm64 host/],
  [{ 'cache-max-size': 'lots' }, /invalid cache-max-size: "lots" \(a size such as 20G, 512M or 1\.5T\)/],
  [{ 'disk-size': '512M' }, /invalid disk-size: "512M" \(a whole size of at least 1G/],
  [{ 'disk-size': '1.5G' }, /invalid disk-size: "1\.5G"/],
  [{ sync: 'out' }, /invalid sync: "out" \(allowed: in, both, none\)/],
  [{ 'browser-source': 'cdn' }, /invalid browser-source: "cdn" \(allowed: auto, upstream, registries\)/],
  [{ boot: 'ok bad/name' }, /invalid boot: "bad\/name" \(a VM name/],
  [{ 'environment-variables': 'FOO 1BAR' }, /invalid environment-variables: "1BAR" \(an environment variable name\)/],
  [{ 'boot-timeout': '0' }, /invalid boot-timeout: "0" \(a whole number of seconds from 1/],
];

describe('inputs', () => {
  test('defaults', () => {
    const c = parse({});
    assert.equal(c.distro, 'debian-13');
    assert.equal(c.arch, 'arm64');
    assert.equal(c.crossArch, false);
    assert.equal(c.memoryMb, 2048);
    assert.equal(c.cpus, 2);
    assert.equal(c.kvm, 'auto');
    assert.deepEqual([c.browser, c.redownload, c.snapshot, c.cache, c.installDeps], [false, false, true, true, true]);
    assert.equal(c.cacheDir, '/home/runner/.cache/ryra-vm');
    assert.deepEqual(c.packages, []);
    assert.equal(c.imageUrl, undefined);
    assert.deepEqual([c.cacheMaxBytes, c.diskSize, c.sync, c.browserSource, c.bootTimeoutMs, c.prepareScript], [20 * 2 ** 30, '20G', 'both', 'auto', undefined, '']);
    assert.deepEqual([c.boot, c.environmentVariables], [[], []]);
    assert.deepEqual([c.basePackages, c.cacheSave], [true, true]);
  });

  test('distro ubuntu-24.04; base-packages and cache-save off (as an expression renders false)', () => {
    const c = parse({ distro: 'ubuntu-24.04', 'base-packages': 'false', 'cache-save': 'false', packages: 'jq' });
    assert.equal(c.distro, 'ubuntu-24.04');
    assert.deepEqual([c.basePackages, c.cacheSave, c.packages], [false, false, ['jq']]);
    // The cache still restores: cache-save false only stops saving.
    assert.equal(c.cache, true);
    assert.deepEqual([parse({ 'base-packages': 'True', 'cache-save': 'TRUE' }).basePackages, parse({ 'cache-save': 'true' }).cacheSave], [true, true]);
  });

  test('kvm-fix-permissions: auto changes a GitHub-hosted runner only; true and false say so anywhere', () => {
    const hosted: HostFacts = { ...host, env: { RUNNER_ENVIRONMENT: 'github-hosted' } };
    const selfHosted: HostFacts = { ...host, env: { RUNNER_ENVIRONMENT: 'self-hosted' } };
    assert.deepEqual([parse({}, hosted).kvmFixPermissions, parse({}, selfHosted).kvmFixPermissions, parse({}).kvmFixPermissions], [true, false, false]);
    assert.deepEqual([parse({ 'kvm-fix-permissions': 'true' }, selfHosted).kvmFixPermissions, parse({ 'kvm-fix-permissions': 'false' }, hosted).kvmFixPermissions], [true, false]);
  });

  test(`${BAD_INPUTS.length} bad inputs each fail with one line naming input, value and what is allowed`, () => {
    assert.ok(BAD_INPUTS.length >= 15);
    for (const [inputs, expected] of BAD_INPUTS) {
      assert.throws(() => parse(inputs), (err: Error) => {
        assert.ok(err instanceof InputError, `${JSON.stringify(inputs)} threw ${err}`);
        assert.match(err.message, expected, JSON.stringify(inputs));
        assert.equal(err.message.includes('\n'), false);
        return true;
      });
    }
  });

  test('good values', () => {
    const c = parse({
      distro: 'fedora-43',
      arch: 'amd64',
      memory: '4096',
      cpus: '4',
      browser: 'True',
      kvm: 'false',
      packages: 'jq\n  htop, jq',
      'image-url': 'file:///srv/img.qcow2',
      'image-checksum': `SHA256:${'AB'.repeat(32)}`.replace('SHA256', 'sha256'),
      'cache-dir': '~/vm-cache',
    });
    assert.equal(c.arch, 'amd64');
    assert.equal(c.crossArch, true);
    assert.equal(c.memoryMb, 4096);
    assert.equal(c.browser, true);
    assert.deepEqual(c.packages, ['jq', 'htop']);
    assert.equal(c.imageUrl, 'file:///srv/img.qcow2');
    assert.deepEqual(c.imageChecksum, { algorithm: 'sha256', hex: 'ab'.repeat(32) });
    assert.equal(c.cacheDir, '/home/runner/vm-cache');
  });

  test('a plain path image-url is made absolute', () => {
    const c = parse({ 'image-url': 'img/x.qcow2', 'image-checksum': `sha512:${'0'.repeat(128)}` });
    assert.ok(c.imageUrl!.startsWith('/') && c.imageUrl!.endsWith('/img/x.qcow2'));
  });

  test('ryra-vm prepare --help: a flag for every input, except those it names as having none', () => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'prepare', '--help'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const flags = new Set([...r.stdout.matchAll(/^ {2}--([a-z-]+)/gm)].map((m) => m[1]));
    const prose = r.stdout.replace(/\s+/g, ' ');
    const none = /The action's (.+?) inputs have no flags/.exec(prose)?.[1].split(/, | and /) ?? [];
    assert.ok(none.length > 0, 'the help names the inputs without flags');
    // The README's "Outside Actions" says the same.
    const readme = fs.readFileSync('README.md', 'utf8').replace(/\s+/g, ' ').replaceAll('`', '');
    const inReadme = /The action's (.+?) inputs have no flags/.exec(readme)?.[1].split(/, | and /) ?? [];
    assert.deepEqual([...inReadme].sort(), [...none].sort(), 'the README names the same inputs without flags as the help');
    assert.match(prose, /the Actions cache is off/);
    for (const input of Object.values(Inputs)) {
      const covered = flags.has(input) || flags.has(`no-${input}`) || none.includes(input) || input === Inputs.Cache;
      assert.ok(covered, `input ${input}: no --${input} flag, and the help does not say it has none`);
      assert.ok(!(none.includes(input) && flags.has(input)), `input ${input} has a flag the help says it lacks`);
    }
    // The defaults that differ are named: install-deps is opt-in here.
    assert.match(prose, /host tools are installed only with --install-deps/);
  });

  test('cache dir follows XDG_CACHE_HOME like the seed', () => {
    assert.equal(defaultCacheDir({ env: { XDG_CACHE_HOME: '/xdg' }, homedir: '/h' }), '/xdg/ryra-vm');
    assert.equal(defaultCacheDir({ env: {}, homedir: '/h' }), '/h/.cache/ryra-vm');
    assert.equal(defaultCacheDir({ env: { XDG_CACHE_HOME: 'relative' }, homedir: '/h' }), '/h/.cache/ryra-vm');
  });
});
