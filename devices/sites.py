"""Where virtual buttons stand: kelurahan offices in Central Jakarta, and many more buttons spread
around them for load scenarios.

Coordinates are approximate and the area codes follow the Kemendagri pattern
(province.city.district.village); both are for illustration only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from siagafw import proto


@dataclass(frozen=True, slots=True)
class Site:
    device_id: str
    place: str
    area: str
    lat: str
    lon: str

    def location(self) -> dict[str, object]:
        return proto.location(proto.parse_degrees_e6(self.lat), proto.parse_degrees_e6(self.lon), self.place,
                              self.area)


OFFICES = (
    Site("jkt-gambir-01", "Kantor Kelurahan Gambir", "31.71.01.1001", "-6.176600", "106.819000"),
    Site("jkt-menteng-01", "Kantor Kelurahan Menteng", "31.71.06.1001", "-6.196000", "106.831400"),
    Site("jkt-cikini-01", "Kantor Kelurahan Cikini", "31.71.06.1004", "-6.190600", "106.840700"),
    Site("jkt-kebonkelapa-01", "Kantor Kelurahan Kebon Kelapa", "31.71.01.1005", "-6.168900", "106.815900"),
    Site("jkt-petojoutara-01", "Kantor Kelurahan Petojo Utara", "31.71.01.1004", "-6.163300", "106.812300"),
    Site("jkt-kwitang-01", "Kantor Kelurahan Kwitang", "31.71.02.1006", "-6.182500", "106.841200"),
)

PLACES = ("Pos RW", "Pasar", "Sekolah Dasar", "Halte", "Masjid", "Puskesmas", "Balai Warga", "Taman")


def fleet_sites(n: int, seed: int = 7) -> list[Site]:
    """n buttons: the kelurahan offices first, then posts, markets, schools and stops within about
    a kilometre of each office, in turn."""
    rng = random.Random(seed)
    sites = list(OFFICES[:n])
    i = 0
    while len(sites) < n:
        office = OFFICES[i % len(OFFICES)]
        number = i // len(OFFICES) + 2
        lat = proto.parse_degrees_e6(office.lat) + rng.randint(-9000, 9000)
        lon = proto.parse_degrees_e6(office.lon) + rng.randint(-9000, 9000)
        stem = office.device_id.rsplit("-", 1)[0]
        sites.append(Site(f"{stem}-{number:02d}", f"{rng.choice(PLACES)} {office.place.split()[-1]} {number}",
                          office.area, _degrees(lat), _degrees(lon)))
        i += 1
    return sites


def _degrees(e6: int) -> str:
    sign = "-" if e6 < 0 else ""
    return f"{sign}{abs(e6) // 1_000_000}.{abs(e6) % 1_000_000:06d}"
