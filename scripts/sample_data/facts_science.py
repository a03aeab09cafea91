"""Hand-written facts of science: chemical elements and planets (see ``facts.py``).

See :mod:`scripts.sample_data.facts` for how these facts are written.
"""

from __future__ import annotations

# name, symbol, atomic number, note
ELEMENTS = [
    ("hydrogen", "H", 1, "Henry Cavendish identified it as a distinct substance in 1766."),
    ("helium", "He", 2, "It was first detected in the spectrum of the Sun in 1868."),
    ("carbon", "C", 6, "Diamond and graphite are two forms of the pure element."),
    ("nitrogen", "N", 7, "It makes up about 78 percent of the air."),
    ("oxygen", "O", 8, "It makes up about 21 percent of the air."),
    ("neon", "Ne", 10, "William Ramsay and Morris Travers discovered it in 1898."),
    ("sodium", "Na", 11, "Humphry Davy first isolated it in 1807."),
    ("aluminium", "Al", 13, "Hans Christian Ørsted first produced it in 1825."),
    ("silicon", "Si", 14, "It is the second most common element in the Earth's crust."),
    ("chlorine", "Cl", 17, "Carl Wilhelm Scheele first prepared it in 1774."),
    ("argon", "Ar", 18, "Lord Rayleigh and William Ramsay discovered it in 1894."),
    ("potassium", "K", 19, "Humphry Davy isolated it in 1807, a few days before sodium."),
    ("calcium", "Ca", 20, "Humphry Davy isolated it in 1808."),
    ("iron", "Fe", 26, "Its symbol comes from ferrum, the Latin word for iron."),
    ("copper", "Cu", 29, "Its symbol comes from cuprum, the Latin name of the metal."),
    ("zinc", "Zn", 30, "It is used to coat steel against rust, a process called galvanising."),
    ("silver", "Ag", 47, "Its symbol comes from argentum, the Latin word for silver."),
    ("tin", "Sn", 50, "Its symbol comes from stannum, its Latin name."),
    ("iodine", "I", 53, "Bernard Courtois discovered it in seaweed ash in 1811."),
    ("tungsten", "W", 74, "It has the highest melting point of all metals, about 3,422 degrees Celsius."),
    ("platinum", "Pt", 78, "It is used in catalytic converters."),
    ("gold", "Au", 79, "Its symbol comes from aurum, the Latin word for gold."),
    ("mercury", "Hg", 80, "It is the only metal that is liquid at room temperature."),
    ("lead", "Pb", 82, "Its symbol comes from plumbum, the Latin word for lead."),
    ("polonium", "Po", 84, "Marie and Pierre Curie discovered it in 1898 and named it after Poland."),
    ("radium", "Ra", 88, "Marie and Pierre Curie discovered it in 1898."),
    ("uranium", "U", 92, "Martin Heinrich Klaproth discovered it in 1789."),
]

# element name -> (family, state at room temperature)
ELEMENT_CLASS = {
    "hydrogen": ("nonmetal", "gas"), "helium": ("noble gas", "gas"), "carbon": ("nonmetal", "solid"),
    "nitrogen": ("nonmetal", "gas"), "oxygen": ("nonmetal", "gas"), "neon": ("noble gas", "gas"),
    "sodium": ("alkali metal", "solid"), "aluminium": ("post-transition metal", "solid"),
    "silicon": ("metalloid", "solid"), "chlorine": ("halogen", "gas"), "argon": ("noble gas", "gas"),
    "potassium": ("alkali metal", "solid"), "calcium": ("alkaline earth metal", "solid"),
    "iron": ("transition metal", "solid"), "copper": ("transition metal", "solid"),
    "zinc": ("transition metal", "solid"), "silver": ("transition metal", "solid"),
    "tin": ("post-transition metal", "solid"), "iodine": ("halogen", "solid"),
    "tungsten": ("transition metal", "solid"), "platinum": ("transition metal", "solid"),
    "gold": ("transition metal", "solid"), "mercury": ("transition metal", "liquid"),
    "lead": ("post-transition metal", "solid"), "polonium": ("rare, highly radioactive element", "solid"),
    "radium": ("radioactive alkaline earth metal", "solid"), "uranium": ("radioactive actinide", "solid"),
}

# name, position from the Sun, note
PLANETS = [
    ("Mercury", 1, "It has no moons, and a year on Mercury lasts 88 Earth days."),
    ("Venus", 2, "It has no moons, and its thick carbon dioxide atmosphere makes it the hottest planet."),
    ("Earth", 3, "It has one natural satellite, the Moon."),
    ("Mars", 4, "Its two small moons are called Phobos and Deimos."),
    ("Jupiter", 5, "Galileo Galilei discovered its four largest moons in 1610; the largest is Ganymede."),
    ("Saturn", 6, "Christiaan Huygens discovered its largest moon, Titan, in 1655."),
    ("Uranus", 7, "William Herschel discovered the planet on 13 March 1781."),
    ("Neptune", 8,
     "Johann Galle found the planet in 1846 close to the position Urbain Le Verrier had predicted."),
]
